# Sourced by the Makefile before pip runs: keep pip usable on a machine whose
# certificate bundle or network is missing. A certificate variable that names a
# file which does not exist makes pip fail before it reads any index, and an
# index that cannot be reached is retried five times for every package.
for var in PIP_CERT REQUESTS_CA_BUNDLE CURL_CA_BUNDLE SSL_CERT_FILE SSL_CERT_DIR; do
    eval "path=\${$var:-}"
    if [ -n "$path" ] && [ ! -e "$path" ]; then unset "$var"; fi
done
if ! python3 -c "import socket; socket.getaddrinfo('pypi.org', 443)" 2>/dev/null; then
    export PIP_RETRIES=0
fi
