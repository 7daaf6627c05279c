import subprocess
import sys

import numpy as np
import pytest
import torch

from ppl_vae.config import DataConfig
from ppl_vae.data.datasets import load_data, validate_array
from ppl_vae.errors import UserError


def test_digits_split_is_fixed_and_scaled(digits):
    assert digits.train.shape == (1438, 64) and digits.test.shape == (359, 64)
    assert digits.train.dtype == torch.float32
    assert 0.0 == digits.train.min() and digits.train.max() == 1.0
    again = load_data(DataConfig())
    assert torch.equal(again.test, digits.test)
    other = load_data(DataConfig(split_seed=1))
    assert not torch.equal(other.test, digits.test)
    # train and test are disjoint halves of the same 1797 rows
    assert len(np.unique(np.concatenate([digits.train.numpy(), digits.test.numpy()]), axis=0)) > 1700


@pytest.mark.parametrize(
    "array,message",
    [
        (np.zeros(5), "shape"),
        (np.zeros((0, 4)), "empty"),
        (np.array([[1.0, np.inf]]), "NaN or infinite"),
        (np.array([["a", "b"]]), "numeric"),
        (np.array([[1 + 1j, 0]]), "complex"),
    ],
)
def test_validate_array_refuses(array, message):
    with pytest.raises(UserError, match=message):
        validate_array(array, "x")


def test_user_npy_and_npz(tmp_path):
    x = np.random.rand(50, 3, 4).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    data = load_data(DataConfig(name=str(tmp_path / "a.npy")))
    assert data.image_shape == (3, 4) and len(data.train) + len(data.test) == 50
    np.savez(tmp_path / "b.npz", x_train=(x * 255).astype(np.uint8), x_test=(x[:5] * 255).astype(np.uint8))
    data = load_data(DataConfig(name=str(tmp_path / "b.npz")))
    assert len(data.test) == 5 and float(data.train.max()) <= 1.0


def test_mnist_from_shared_folder(shared_data):
    data = load_data(DataConfig(name="mnist", root=str(shared_data / "mnist")))
    assert data.train.shape == (60000, 784) and data.test.shape == (10000, 784)
    assert data.image_shape == (28, 28) and data.test_labels is not None


def test_frey_from_shared_folder(shared_data):
    data = load_data(DataConfig(name="frey", root=str(shared_data / "frey")))
    assert data.image_shape == (28, 20) and len(data.train) + len(data.test) == 1965


def test_npy_is_streamed_by_rows_and_trains_like_the_array_in_memory(tmp_path):
    """A .npy file is read row by row (never whole) and gives the same training as the array itself."""
    import copy

    from ppl_vae.data.datasets import Dataset
    from ppl_vae.data.rowfile import RowFile, as_tensor
    from ppl_vae.inference.trainer import Trainer
    from ppl_vae.runs.build import build_program
    from tests.conftest import tiny_config

    x = (np.random.default_rng(0).random((300, 5, 4)) * 255).astype(np.uint8)
    np.save(tmp_path / "big.npy", x)
    streamed = load_data(DataConfig(name=str(tmp_path / "big.npy")))
    assert isinstance(streamed.train, RowFile) and streamed.image_shape == (5, 4)
    in_memory = Dataset("mem", as_tensor(streamed.train), as_tensor(streamed.test), (5, 4))
    torch.testing.assert_close(
        in_memory.train[7], torch.from_numpy(x[streamed.train.rows[7]].reshape(-1) / np.float32(255))
    )
    config = tiny_config(train={"epochs": 2, "batch_size": 32})
    results = []
    for data in (streamed, in_memory):
        torch.manual_seed(0)
        program = build_program(config, 20, (5, 4))
        history = Trainer(program, copy.deepcopy(config.train), data.train, data.test, progress=False).fit()
        results.append((history, [p.detach().clone() for p in program.parameters()]))
    numbers = [[(row["train_objective"], row["test_elbo"]) for row in history] for history, _ in results]
    assert numbers[0] == numbers[1]
    for p, q in zip(results[0][1], results[1][1]):
        assert torch.equal(p, q)


def test_npy_with_nan_deep_inside_is_refused(tmp_path):
    x = np.random.rand(1000, 8).astype(np.float32)
    x[977, 3] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(UserError, match="NaN"):
        load_data(DataConfig(name=str(tmp_path / "nan.npy")))
    np.save(tmp_path / "fortran.npy", np.asfortranarray(np.random.rand(10, 3)))
    with pytest.raises(UserError, match="Fortran"):
        load_data(DataConfig(name=str(tmp_path / "fortran.npy")))


def test_caltech101_is_the_papers_binary_split(shared_data):
    """4100/2264/2307 binary images, read as the VampPrior code reads them: Fortran order, inverted."""
    from scipy.io import loadmat

    data = load_data(DataConfig(name="caltech101", root=str(shared_data / "caltech101_silhouettes")))
    assert (len(data.train), len(data.val), len(data.test)) == (4100, 2264, 2307)
    for x in (data.train, data.val, data.test):
        assert set(torch.unique(x).tolist()) == {0.0, 1.0}
    raw = loadmat(shared_data / "caltech101_silhouettes" / "caltech101_silhouettes_28_split1.mat")["test_data"]
    paper = 1.0 - raw.reshape(-1, 28, 28).reshape(-1, 784, order="F")
    assert np.array_equal(data.test.numpy(), paper.astype(np.float32))
    # silhouettes are 1 on a 0 background: the border is off, the centre mostly on
    images = data.train.reshape(-1, 28, 28)
    border = torch.cat([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], 1).mean()
    assert border < 0.05 and images[:, 10:18, 10:18].mean() > 0.8


def test_digits_are_scikit_learns_load_digits_read_without_importing_it(digits):
    """The rows and labels are load_digits' (split by the same seeded permutation), and a command's start
    does not pay for importing scikit-learn."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    rows = torch.cat([digits.train, digits.test]).numpy()
    labels = np.concatenate([digits.train_labels, digits.test_labels])
    ours = np.column_stack([rows, labels])  # each image with its class
    pixels = (bunch.images.reshape(len(bunch.images), -1) / 16.0).astype(np.float32)
    theirs = np.column_stack([pixels, bunch.target])
    np.testing.assert_array_equal(ours[np.lexsort(ours.T)], theirs[np.lexsort(theirs.T)])
    code = "import sys; from ppl_vae.config import DataConfig; from ppl_vae.data.datasets import load_data; "
    code += "load_data(DataConfig()); print('sklearn' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_binarize_draws_test_and_validation_rows_once_with_a_fixed_seed(digits):
    """Binary test rows, the same at every load, Bernoulli(pixel): their mean within 5 SE of the grey mean."""
    config = DataConfig(binarize=True, validation=300)
    first, again = load_data(config), load_data(config)
    assert torch.equal(first.test, again.test) and torch.equal(first.val, again.val)
    for binary, grey in ((first.test, digits.test), (first.val, digits.train[-300:])):
        assert set(torch.unique(binary).tolist()) == {0.0, 1.0}
        p = grey.double()
        se = (p * (1 - p)).sum().sqrt() / p.numel()
        assert abs(binary.double().mean() - p.mean()) < 5 * se
    assert torch.equal(first.train, digits.train[:-300])  # training rows stay grey: the trainer draws them


def test_validation_holds_out_the_last_training_rows(digits):
    data = load_data(DataConfig(validation=100))
    assert torch.equal(data.val, digits.train[-100:]) and torch.equal(data.train, digits.train[:-100])
    assert len(data.train_labels) == len(data.train)
    with pytest.raises(UserError, match="leaves no training rows"):
        load_data(DataConfig(validation=len(digits.train)))


def test_dynamic_mnist_test_split_is_the_one_binarization_of_mnist_nll(shared_data):
    """--binarize on MNIST scores the test images benchmarks/mnist_nll.py has scored (seed 123)."""
    grey = load_data(DataConfig(name="mnist", root=str(shared_data / "mnist"))).test
    data = load_data(DataConfig(name="mnist", root=str(shared_data / "mnist"), binarize=True, validation=10000))
    assert torch.equal(data.test, torch.bernoulli(grey, generator=torch.Generator().manual_seed(123)))
    assert (len(data.train), len(data.val)) == (50000, 10000)


def test_named_data_sets_are_found_through_ppl_vae_data_not_the_working_directory(tmp_path, monkeypatch):
    """PPL_VAE_DATA names the folder of data sets; the working directory never decides what a name loads."""
    from ppl_vae.data.datasets import shared_data_dir

    folder = tmp_path / "elsewhere" / "frey"
    folder.mkdir(parents=True)
    monkeypatch.setenv("PPL_VAE_DATA", str(tmp_path / "elsewhere"))
    assert shared_data_dir() == tmp_path / "elsewhere"
    with pytest.raises(UserError, match=str(folder)):  # looked for exactly there
        load_data(DataConfig(name="frey"))
    monkeypatch.delenv("PPL_VAE_DATA")
    before = shared_data_dir()
    monkeypatch.chdir(tmp_path)  # a folder with no data beside it: same answer as from anywhere else
    assert shared_data_dir() == before
