"""The library inside the clients its users plug it into (issue 21): torch.compile, autograd, MONAI's
PersistentDataset, DataLoader workers sharing StainNet's table, the Hub, and torch.save / torch.load."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from _transforms import TRANSFORMS, make_transform

import stain_transforms
from stain_transforms.functional.reinhard import lab_statistics, reinhard_transfer
from stain_transforms.testing import synthetic_tissue


def _tiles(size: int, count: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A (count, 3, size, size) batch of synthetic tissue in [0, 1]."""
    images = [synthetic_tissue(size, seed=seed + i, stain_scale=0.8 + 0.1 * i) for i in range(count)]
    return torch.stack([torch.from_numpy(image).permute(2, 0, 1) for image in images]).to(dtype) / 255


def _inner_tiles(size: int, count: int, seed: int) -> torch.Tensor:
    """:func:`_tiles` in float64, squeezed into [0.05, 0.95] with a little noise: no pixel sits on a clamp, and no
    two channels of a pixel are equal (a tie of a max), where gradcheck's finite differences would see a kink."""
    noise = torch.rand(count, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return _tiles(size, count, seed, torch.float64) * 0.9 + 0.05 + 0.01 * noise


# -- 1. torch.compile with dynamic shapes -------------------------------------------------------------------


@pytest.mark.slow  # 3-18 s a transform: torch.compile is slow on a CPU
@pytest.mark.parametrize("name", TRANSFORMS)
def test_compiled_transform_follows_batch_and_image_size(name):
    # The GPU training loop (examples/dataloader_gpu.py) calls the transforms on float batches whose batch size
    # changes at the end of an epoch. Dynamo traces the call whatever the backend (inductor would only add C++
    # compile time here); "aot_eager" also traces it through AOT autograd.
    transform = stain_transforms.HEDJitter.strong(p=0.5) if name == "HEDJitter" else make_transform(name)
    compiled = torch.compile(transform, dynamic=True, backend="aot_eager")
    torch._dynamo.reset()
    try:
        for batch_size, size in ((2, 16), (3, 16), (2, 24)):
            batch = _tiles(size, batch_size, seed=batch_size * size)
            torch.manual_seed(1)
            out = compiled(batch)
            torch.manual_seed(1)
            expected = transform(batch)
            torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    finally:
        torch._dynamo.reset()


# -- 3. gradients ---------------------------------------------------------------------------------------------


def test_reinhard_transfer_differentiates_in_the_targets_and_the_image():
    rgb = _inner_tiles(8, 1, seed=3)
    mean, std = lab_statistics(_tiles(8, 1, seed=0, dtype=torch.float64))
    target_mean, target_std = mean[0].clone().requires_grad_(), std[0].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda m, s: reinhard_transfer(rgb, m, s), (target_mean, target_std))
    image = rgb.clone().requires_grad_()
    assert torch.autograd.gradcheck(reinhard_transfer, (image, target_mean, target_std))


def test_reinhard_normalize_keeps_the_graph_of_a_float_tensor():
    normalize = stain_transforms.ReinhardNormalize().fit(synthetic_tissue(32, seed=0))
    normalize.double()
    image = _inner_tiles(8, 2, seed=5).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: the graph is kept
        out = normalize(image)
    assert out.requires_grad
    assert torch.autograd.gradcheck(normalize, (image,))
    assert torch.autograd.gradcheck(normalize, (image[0].detach().clone().requires_grad_(),))  # one CHW image


def test_hed_jitter_keeps_the_graph_of_a_float_tensor():
    jitter = stain_transforms.HEDJitter.strong(p=1.0)
    image = _inner_tiles(8, 2, seed=7).requires_grad_()
    params = jitter.generate_parameters(2)
    assert jitter.apply_params(image, params).requires_grad
    assert torch.autograd.gradcheck(lambda x: jitter.apply_params(x, params), (image,))


@pytest.mark.parametrize("name", ["MacenkoNormalize", "StainNetNormalize", "StainGANNormalize"])
def test_differentiable_transforms_pass_gradients_back(name):
    image = _tiles(16, 2, seed=11, dtype=torch.float64).requires_grad_()
    out = make_transform(name)(image)
    assert out.requires_grad
    (grad,) = torch.autograd.grad(out.sum(), image)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_a_transform_that_cannot_differentiate_says_so_once(monkeypatch):
    from stain_transforms import transform as transform_module

    monkeypatch.setattr(transform_module, "_WARNED_DETACHED", set())
    vahadane = make_transform("VahadaneNormalize")
    image = _tiles(16, 1, seed=13).requires_grad_()
    with pytest.warns(UserWarning, match="VahadaneNormalize returns a result detached"):
        out = vahadane(image)
    assert not out.requires_grad
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vahadane(image)  # once per class
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        vahadane(image)  # no autograd, nothing to say


# -- 2. a stable content hash, and MONAI's PersistentDataset ----------------------------------------------------


@pytest.mark.parametrize("name", TRANSFORMS)
def test_content_hash_is_stable_and_follows_state_and_settings(name):
    transform = make_transform(name)
    copy = pickle.loads(pickle.dumps(transform))
    assert transform.content_hash() == copy.content_hash()
    assert len(transform.content_hash()) == 64
    if isinstance(transform, stain_transforms.StainNormalizer):
        refit = type(transform)(**transform.config).fit(synthetic_tissue(64, seed=9))
        assert refit.content_hash() != transform.content_hash()
    elif hasattr(copy, "model"):
        with torch.no_grad():
            next(copy.model.parameters()).add_(1e-3)
        assert copy.content_hash() != transform.content_hash()
    else:
        assert stain_transforms.HEDJitter.light().content_hash() != transform.content_hash()  # settings count


def test_persistent_dataset_reuses_an_identical_fit_and_drops_a_refit(tmp_path):
    monai_data = pytest.importorskip("monai.data")
    from monai.transforms import Compose

    import stain_transforms.monai as stm

    data = [{"image": torch.from_numpy(synthetic_tissue(32, seed=20 + i)).permute(2, 0, 1), "id": i} for i in range(2)]

    def dataset(fitted):
        pipeline = Compose([stm.ReinhardNormalized(keys="image", normalizer=fitted)])
        return monai_data.PersistentDataset(data, pipeline, cache_dir=tmp_path, hash_transform=stm.hash_transform)

    def fit(seed):
        return stain_transforms.ReinhardNormalize().fit([synthetic_tissue(32, seed=seed), synthetic_tissue(32, seed=50)])

    first = fit(0)
    out_first = dataset(first)[0]["image"]
    cached = sorted(tmp_path.iterdir())
    assert cached
    refit = fit(1)
    out_refit = dataset(refit)[0]["image"]
    assert torch.equal(out_refit, refit(data[0]["image"]))  # not the stale output of the first fit
    assert not torch.equal(out_refit, out_first)
    same = fit(0)
    same.apply_batch = lambda *args: pytest.fail("an identical fit must be served from the cache")
    files = sorted(tmp_path.iterdir())
    out_same = dataset(same)[0]["image"]
    assert torch.equal(out_same, out_first)
    assert sorted(tmp_path.iterdir()) == files


# -- 4. StainNet's lookup table: built once, shared through the on-disk cache -----------------------------------


class _CountedBuilds:
    """Replaces ``StainNetNormalize._compute_table`` by a fast fake that counts its calls in a file (so that
    DataLoader workers' builds count too); the fake table depends on the weights, as the real one does."""

    def __init__(self, monkeypatch, folder):
        self.log = folder / "builds.log"
        self.log.touch()
        log = self.log

        def compute(normalizer):
            with open(log, "a") as handle:
                handle.write("build\n")
            level = int(next(normalizer.model.parameters()).detach().abs().sum() * 1000) % 256
            return torch.full((256**3, 3), level, dtype=torch.uint8)

        monkeypatch.setattr(stain_transforms.StainNetNormalize, "_compute_table", compute)

    @property
    def count(self) -> int:
        return len(self.log.read_text().splitlines())


def _stainnet(seed: int = 0) -> stain_transforms.StainNetNormalize:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return stain_transforms.StainNetNormalize(stain_transforms.models.StainNet())


def test_stainnet_table_is_built_once_and_loaded_by_the_next_normalizer(monkeypatch, tmp_path):
    monkeypatch.setenv("STAIN_TRANSFORMS_CACHE", str(tmp_path / "cache"))
    builds = _CountedBuilds(monkeypatch, tmp_path)
    first = _stainnet().lookup_table()
    assert builds.count == 1
    assert list((tmp_path / "cache" / "lut").glob("*.npy"))
    second = _stainnet().lookup_table()  # another instance, the same weights: loaded
    assert builds.count == 1
    assert torch.equal(first, second)
    other = _stainnet(seed=1).lookup_table()  # other weights: another table
    assert builds.count == 2
    assert not torch.equal(other, first)
    assert len(list((tmp_path / "cache" / "lut").glob("*.npy"))) == 2


@pytest.mark.parametrize("damage", ["truncated", "garbage", "misshapen"])
def test_a_damaged_cached_table_is_rebuilt(monkeypatch, tmp_path, damage):
    monkeypatch.setenv("STAIN_TRANSFORMS_CACHE", str(tmp_path / "cache"))
    builds = _CountedBuilds(monkeypatch, tmp_path)
    expected = _stainnet().lookup_table().clone()
    (path,) = (tmp_path / "cache" / "lut").glob("*.npy")
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: 1 << 20])  # a partial copy
    elif damage == "garbage":
        path.write_bytes(b"not a table" * 100)
    else:
        np.save(path, np.zeros((10, 3), np.uint8))
    assert torch.equal(_stainnet().lookup_table(), expected)
    assert builds.count == 2
    assert torch.equal(_stainnet().lookup_table(), expected)  # the rebuilt table was stored again
    assert builds.count == 2


def test_an_unwritable_cache_still_gives_the_table(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("STAIN_TRANSFORMS_CACHE", str(blocker))
    builds = _CountedBuilds(monkeypatch, tmp_path)
    assert _stainnet().lookup_table().shape == (256**3, 3)
    assert builds.count == 1


class _StainNetTiles(torch.utils.data.Dataset):
    def __init__(self, normalize):
        self.normalize = normalize

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return self.normalize(torch.from_numpy(synthetic_tissue(16, seed=index)).permute(2, 0, 1))


def test_dataloader_workers_share_one_table_build(monkeypatch, tmp_path):
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs fork, which carries the counting builder into the workers")
    monkeypatch.setenv("STAIN_TRANSFORMS_CACHE", str(tmp_path / "cache"))
    builds = _CountedBuilds(monkeypatch, tmp_path)
    loader = torch.utils.data.DataLoader(
        _StainNetTiles(_stainnet()), batch_size=1, num_workers=2, multiprocessing_context="fork"
    )
    for _epoch in range(2):  # new workers every epoch
        assert len(list(loader)) == 4
    assert builds.count == 1  # two workers, two epochs: one build; the others waited for it and loaded it


# -- 5. the Hub: classical normalizers, saved transform settings, no network, licences --------------------------


@pytest.mark.parametrize("name", ["ReinhardNormalize", "MacenkoNormalize", "VahadaneNormalize"])
def test_classical_normalizers_round_trip_through_a_hub_folder_and_a_hub_id(name, tmp_path):
    from test_hub import HubStandIn

    klass = getattr(stain_transforms, name)
    fitted = klass(min_tissue_fraction=0.05).fit([synthetic_tissue(32, seed=s) for s in range(2)])
    folder = tmp_path / "saved"
    fitted.save_pretrained(folder, model_card_kwargs={"target_domain": "site B"})
    assert sorted(path.name for path in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = klass.from_pretrained(folder)
    assert type(loaded) is klass and loaded.content_hash() == fitted.content_hash()
    assert klass.from_pretrained(str(folder), min_tissue_fraction=0.2).min_tissue_fraction == 0.2  # overridden
    other = stain_transforms.ReinhardNormalize if name == "MacenkoNormalize" else stain_transforms.MacenkoNormalize
    with pytest.raises(ValueError, match=f"holds a {fitted.model_type} model, not a {other.model_type} one"):
        other.from_pretrained(folder)
    hub = HubStandIn()
    try:
        hub.add_folder("site-b/normalizer", folder)
        remote = klass.from_pretrained("site-b/normalizer", endpoint=hub.url, cache_dir=tmp_path / "hf_cache")
    finally:
        hub.close()
    assert remote.content_hash() == fitted.content_hash()


def test_model_transforms_keep_their_settings_through_save_pretrained(tmp_path):
    from stain_transforms.models import StainGANGenerator, StainNet

    gan = stain_transforms.StainGANNormalize(StainGANGenerator(ngf=8, n_blocks=1), tile_size=96, overlap=24,
                                             min_tissue_fraction=0.1)
    gan.save_pretrained(tmp_path / "gan")
    loaded = stain_transforms.StainGANNormalize.from_pretrained(tmp_path / "gan")
    assert loaded.config == gan.config and loaded.content_hash() == gan.content_hash()
    assert stain_transforms.StainGANNormalize.from_pretrained(tmp_path / "gan", tile_size=128).config == {
        **gan.config, "tile_size": 128,
    }
    net = stain_transforms.StainNetNormalize(StainNet(), backend="conv")
    net.save_pretrained(tmp_path / "net")
    assert stain_transforms.StainNetNormalize.from_pretrained(tmp_path / "net").backend == "conv"
    assert stain_transforms.StainNetNormalize.from_pretrained(tmp_path / "net", backend="lut").backend == "lut"
    StainNet().save_pretrained(tmp_path / "bare")  # saved by the model alone: the defaults
    assert stain_transforms.StainNetNormalize.from_pretrained(tmp_path / "bare").backend == "auto"
    assert stain_transforms.StainGANNormalize.from_pretrained(tmp_path / "gan", tile_size=512).tile_size == 512


def _unused_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("name", ["ReinhardNormalize", "StainNetNormalize", "StainGANNormalize"])
def test_push_to_hub_without_network_raises_connection_error(name):
    endpoint = f"http://127.0.0.1:{_unused_port()}"
    with pytest.raises(ConnectionError, match=f"cannot push to 'me/normalizer'.*{endpoint} is unreachable"):
        make_transform(name).push_to_hub("me/normalizer", endpoint=endpoint, token="hf_not_a_real_token")


def test_model_cards_carry_a_licence(tmp_path):
    from huggingface_hub import ModelCard

    from stain_transforms.hub import weights_dir
    from stain_transforms.models import StainNet

    for card_path in sorted(weights_dir().glob("*/README.md")):  # the bundled weights: research use only
        card = ModelCard.load(card_path)
        assert card.data.license == "other" and card.data.license_name == "research-use-only", card_path
        assert "Research use only" in card.text
    StainNet().save_pretrained(tmp_path / "default")
    card = ModelCard.load(tmp_path / "default" / "README.md")
    assert card.data.license == "other" and card.data.license_name == "not-stated"
    assert "No licence was stated" in card.text
    for transform in (stain_transforms.StainNetNormalize(StainNet()), make_transform("MacenkoNormalize")):
        folder = tmp_path / type(transform).__name__
        transform.save_pretrained(folder, model_card_kwargs={"license": "cc-by-4.0"})
        card = ModelCard.load(folder / "README.md")
        assert card.data.license == "cc-by-4.0" and card.data.license_name is None
        assert "`cc-by-4.0`" in card.text
    named = {"license": "other", "license_name": "site-b-terms", "license_link": "https://example.org/terms"}
    StainNet().save_pretrained(tmp_path / "named", model_card_kwargs=named)
    card = ModelCard.load(tmp_path / "named" / "README.md")
    assert (card.data.license, card.data.license_name, card.data.license_link) == tuple(named.values())


# -- 6. torch.save / torch.load -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TRANSFORMS)
def test_torch_load_with_weights_only_reads_a_saved_transform(name, tmp_path):
    transform = make_transform(name)
    torch.save(transform, tmp_path / "transform.pt")
    loaded = torch.load(tmp_path / "transform.pt")  # the default: weights_only=True
    assert type(loaded) is type(transform) and loaded.content_hash() == transform.content_hash()
    image = synthetic_tissue(32, seed=4)
    if name == "HEDJitter":
        transform.generator.manual_seed(3)
        loaded.generator.manual_seed(3)
    np.testing.assert_array_equal(loaded(image), transform(image))
