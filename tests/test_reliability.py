"""Files and settings that strangers hand a shared server, and crashes in the middle of writing:
each test reproduces one way the app or a training run could be taken down or left wrong, and
checks the message or the state it now gives instead."""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusion_core import networks
from diffusion_core.checkpoint import CheckpointError, load_checkpoint, modify_description, update_description
from diffusion_core.cli import main
from diffusion_core.config import ConfigError, ExperimentConfig, load_experiment
from diffusion_core.evaluation import record_result
from diffusion_core.files import file_lock, remove_temporaries, write_json
from diffusion_core.training import RunOptions, Trainer
from diffusion_core.unet import UNetConfig
from explorer_ui import catalog, settings
from tests.helpers import make_tiny_checkpoint, random_images, tiny_experiment

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- one bad description, one entry
def hostile(folder: Path, good: Path, name: str, change) -> Path:
    """A copy of the good description under ``name`` (same weights file), edited by ``change``
    (a function of the dict, or of the JSON text when it takes a str)."""
    text = good.read_text()
    desc = json.loads(text)
    desc["name"] = name
    if change.__code__.co_varnames[:1] == ("text",):
        out = change(json.dumps(desc, indent=1))
        assert out != json.dumps(desc, indent=1), name
    else:
        change(desc)
        out = json.dumps(desc)
    path = folder / f"{name}.json"
    path.write_text(out)
    return path


def network(**values):
    return lambda d: d["experiment"]["network"].update(values)


HOSTILE = {  # name -> (edit, what the reason says)
    "zero_heads": (network(attention_heads=0, attention_resolutions=[8]),
                   "[network] attention_heads must be an integer from 1 to 64, got 0"),
    "zero_heads_unused": (network(attention_heads=0), "attention_heads must be an integer from 1 to 64, got 0"),
    "infinite_width": (lambda text: text.replace('"widths": [\n    8,', '"widths": [\n    Infinity,'),
                       "[network] widths[0] must be an integer from 1 to 2048, got inf"),
    "huge_integer": (lambda text: text.replace('"block_depth": 1', '"block_depth": ' + "9" * 5000),
                     "is not valid JSON: Exceeds the limit (4300 digits)"),
    "wide_embedding": (network(embedding_dims=10**9), "embedding_dims must be an integer from 2 to 4096, got 1000000000"),
    "many_channels": (network(channels=10**9), "channels must be an integer from 1 to 4"),
    "float_timesteps": (lambda d: d["experiment"]["schedule"].update(num_timesteps=2e8),
                        "[schedule] num_timesteps must be an integer from 1 to 100000, got 200000000.0"),
    "nan_std": (lambda d: d.update(normalization={"mean": [0.5] * 3, "std": [float("nan")] * 3}),
                "bad normalization: normalization needs 3 finite means and 3 finite positive standard deviations"),
    "bool_depth": (network(block_depth=True), "block_depth must be an integer from 1 to 8, got True"),
    "nested": (lambda text: text.replace('"metrics": {}', '"metrics": ' + "[" * 100_000 + "]" * 100_000),
               "is not valid JSON"),
}


def test_one_hostile_description_spoils_only_its_own_entry(tmp_path):
    good = make_tiny_checkpoint(tmp_path, "good")
    for name, (change, _) in HOSTILE.items():
        hostile(tmp_path, good, name, change)
    entries = {e.path.stem: e for e in catalog.scan(tmp_path)}
    assert entries["good"].usable
    for name, (_, reason) in HOSTILE.items():
        assert not entries[name].usable, name
        assert reason in entries[name].error, (name, entries[name].error)
        assert str(tmp_path / f"{name}.json") in entries[name].error
    model = load_checkpoint(good)  # the good one still loads and runs
    out = model.network(torch.zeros(1, 3, 16, 16), torch.ones(1))
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["zero_heads", "infinite_width", "float_timesteps", "nan_std"])
def test_loading_a_hostile_description_is_a_message(tmp_path, name, capsys):
    change, reason = HOSTILE[name]
    path = hostile(tmp_path, make_tiny_checkpoint(tmp_path, "good"), name, change)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert reason in str(e.value)
    assert main(["sample", str(path), "--device", "cpu", "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and reason in err and "Traceback" not in err


@pytest.mark.parametrize("section, key, value, message", [
    ("network", "attention_heads", 0, "[network] attention_heads must be an integer from 1 to 64, got 0"),
    ("network", "widths", [float("inf"), 16], "[network] widths[0] must be an integer from 1 to 2048, got inf"),
    ("network", "widths", [8], "[network] widths must hold 2 to 7 entries, got 1"),
    ("network", "widths", "8,16", "[network] widths must be a list, got '8,16'"),
    ("network", "image_size", 4096, "[network] image_size must be an integer from 4 to 1024, got 4096"),
    ("network", "embedding_max_frequency", float("nan"),
     "[network] embedding_max_frequency must be a finite number above 0 and at most 1e+06, got nan"),
    ("network", "embedding_min_frequency", 0.0,
     "[network] embedding_min_frequency must be a finite number above 0 and at most 1e+06, got 0.0"),
    ("network", "batchnorm_momentum", -0.5, "[network] batchnorm_momentum must be a finite number from 0 to 1, got -0.5"),
    ("schedule", "num_timesteps", 10**30, "[schedule] num_timesteps must be an integer from 1 to 100000, "
                                          "got an integer of about 31 digits"),
    ("schedule", "beta_end", float("inf"), "[schedule] beta_end must be a finite number above 0 and at most 1, got inf"),
    ("train", "learning_rate", float("nan"), "[train] learning_rate must be a finite number above 0 and at most 1"),
    ("train", "batch_size", 1_000_000, "[train] batch_size must be an integer from 1 to 65536, got 1000000"),
    ("train", "seed", -1, "[train] seed must be an integer from 0 to 9223372036854775807, got -1"),
    ("train", "ema_warmup", "yes", "[train] ema_warmup must be true or false, got 'yes'"),
    ("train", "loss", ["l1"], "[train] loss must be one of l1, l2, got ['l1']"),
    ("data", "samples", 0, "[data] samples must be an integer from 1 to 1000000000, got 0"),
])
def test_every_config_number_is_bounded_with_the_field_in_the_message(section, key, value, message):
    d = tiny_experiment().to_dict()
    d[section][key] = value
    with pytest.raises(ConfigError) as e:
        ExperimentConfig.from_dict(d, "x.json")
    assert str(e.value) == f"x.json: {message}" or str(e.value).startswith(f"x.json: {message}")


def test_top_level_fields_are_checked_too():
    d = tiny_experiment().to_dict()
    with pytest.raises(ConfigError, match=r"^x.json: reported_fid must be a finite number, got nan$"):
        ExperimentConfig.from_dict(dict(d, reported_fid=float("nan")), "x.json")
    with pytest.raises(ConfigError, match=r"^x.json: name must be a text of at most 10000 characters, got 5$"):
        ExperimentConfig.from_dict(dict(d, name=5), "x.json")


def test_attention_heads_must_divide_the_width_where_attention_runs():
    d = tiny_experiment().to_dict()  # widths (8, 16) at resolutions (16, 8)
    d["network"].update(attention_resolutions=[8], attention_heads=3)
    with pytest.raises(ConfigError, match=r"\[network\]: width 16 at resolution 8 is not divisible by 3 heads"):
        ExperimentConfig.from_dict(d, "x.json")
    d["network"]["attention_heads"] = 4
    assert ExperimentConfig.from_dict(d, "x.json").network.attention_heads == 4


def test_every_shipped_experiment_is_within_the_bounds_and_the_budget():
    for path in sorted((ROOT / "experiments").glob("*.toml")):
        experiment = load_experiment(path)
        assert networks.over_budget(experiment.network) is None, path.name
    for path in sorted((ROOT / "checkpoints").glob("*.json")):  # cleared by the bound, without measuring
        network = ExperimentConfig.from_dict(json.loads(path.read_text())["experiment"]).network
        assert networks.KINDS["unet"].activation_bound(network) <= networks.MAX_ACTIVATION_BYTES, path.name


# ------------------------------------------------------------------- the network's memory budget
def test_network_cost_is_measured_without_memory():
    """A tiny kind whose peak is known: two 1x1 convolutions, x -> 8 channels -> 3 channels; when
    the second output is made the first is still alive, so the peak is (8 + 3) maps of S x S."""

    class TwoConvConfig:
        kind = "two_conv"
        image_size = 16
        channels = 3

    class TwoConv(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 8, 1)
            self.b = torch.nn.Conv2d(8, 3, 1)

        def forward(self, x, noise_variance):
            return self.b(self.a(x))

    kinds = dict(networks.KINDS, two_conv=networks.NetworkKind(TwoConvConfig, TwoConv, lambda c: None))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(networks, "KINDS", kinds)
        cost = networks.network_cost(TwoConvConfig())
    assert cost == networks.NetworkCost(parameters=3 * 8 + 8 + 8 * 3 + 3, activation_bytes=(8 + 3) * 16 * 16 * 4)

    config = UNetConfig(widths=(8, 16), image_size=16, block_depth=1)
    rng = torch.get_rng_state()
    cost = networks.network_cost(config)
    assert torch.equal(rng, torch.get_rng_state())  # measuring draws no random numbers
    assert cost.parameters == networks.count_parameters(networks.build_network(config))
    # at least the 16x16 map of width 8 and its skip copy concatenated with the width-16 upsampled map
    assert cost.activation_bytes >= (8 + 16) * 16 * 16 * 4
    assert cost.activation_bytes < 1 << 20


@pytest.mark.parametrize("widths, size, depth, attention, embedding", [
    ((8, 16), 16, 1, (), 8), ((8, 16), 16, 3, (8,), 64), ((32, 64, 96, 128), 32, 2, (), 32),
    ((64, 32, 128), 32, 1, (16,), 8), ((16, 16, 16, 16, 16), 64, 2, (8,), 32), ((8, 64), 32, 1, (32,), 2),
])
def test_the_unet_activation_bound_holds_the_measured_peak(widths, size, depth, attention, embedding):
    config = UNetConfig(widths=widths, image_size=size, block_depth=depth, attention_resolutions=attention,
                        attention_heads=4 if all(w % 4 == 0 for w in widths) else 1, embedding_dims=embedding)
    measured = networks.network_cost(config).activation_bytes
    assert measured <= networks.KINDS["unet"].activation_bound(config)


def test_only_networks_the_bound_cannot_clear_are_measured(monkeypatch):
    measured = []
    real = networks.network_cost
    monkeypatch.setattr(networks, "network_cost", lambda c: measured.append(c) or real(c))
    small = UNetConfig(widths=(8, 16), image_size=16, block_depth=1)
    assert networks.over_budget(small) is None and measured == []
    big = UNetConfig(widths=(64, 64), image_size=1024, block_depth=1)  # bound 1.6 GiB: measured
    assert networks.KINDS["unet"].activation_bound(big) > networks.MAX_ACTIVATION_BYTES
    assert "GiB of activations" in networks.over_budget(big) and measured == [big]


def test_measuring_in_one_thread_leaves_another_threads_tensors_real():
    """The app lists checkpoints in one session's thread while another samples: the fake tensors
    of a measurement must stay in the measuring thread."""
    from torch._subclasses.fake_tensor import FakeTensor

    seen = []
    stop = threading.Event()

    def compute() -> None:
        while not stop.is_set():
            t = torch.ones(4) * 2
            seen.append(not isinstance(t, FakeTensor) and t.sum().item() == 8.0)

    worker = threading.Thread(target=compute)
    worker.start()
    try:
        for width in range(8, 40, 8):  # new configs: measured, not remembered
            networks.network_cost(UNetConfig(widths=(width, 16), image_size=16, block_depth=1, embedding_dims=6))
    finally:
        stop.set()
        worker.join()
    assert seen and all(seen)


def test_a_description_that_asks_for_an_absurd_network_is_refused_before_allocating(tmp_path):
    good = make_tiny_checkpoint(tmp_path, "good")
    path = hostile(tmp_path, good, "absurd", network(widths=[2048] * 4, image_size=1024, block_depth=8))
    assert path.stat().st_size < 3000  # a small file ...
    config = UNetConfig(widths=(2048,) * 4, image_size=1024, block_depth=8)
    cost = networks.network_cost(config)
    assert cost.parameters > 1_000_000_000 and cost.activation_bytes > 30 << 30  # ... asking for tens of GiB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / (1 << 20 if sys.platform == "darwin" else 1024)
    assert grown_mib < 300
    expected = (f"{path}: the network asks for {cost.parameters:,} parameters (limit 250,000,000) and "
                f"{cost.activation_bytes / 2**30:.2f} GiB of activations for one 1024x1024 image (limit 1 GiB)")
    assert str(e.value) == expected
    entry = next(e for e in catalog.scan(tmp_path) if e.path == path)
    assert entry.error == expected


def test_activations_alone_can_exceed_the_budget(tmp_path):
    config = UNetConfig(widths=(64, 64), image_size=1024, block_depth=1)  # few parameters, huge maps
    cost = networks.network_cost(config)
    assert cost.parameters < networks.MAX_PARAMETERS and cost.activation_bytes > networks.MAX_ACTIVATION_BYTES
    assert "GiB of activations for one 1024x1024 image (limit 1 GiB)" in networks.over_budget(config)


# ------------------------------------------------------------------------- garbage weight values
@pytest.mark.parametrize("dtype, message", [
    (torch.bool, "is bool; weights must be float16, bfloat16 or float32"),
    (torch.float64, "is float64; weights must be float16, bfloat16 or float32"),
    (torch.float8_e4m3fn, "is float8_e4m3fn; weights must be float16, bfloat16 or float32"),
    (torch.complex64, "is complex64; weights must be float16, bfloat16 or float32"),
])
def test_weights_of_another_dtype_are_unusable_and_refused(tmp_path, dtype, message):
    path = make_tiny_checkpoint(tmp_path, "m")
    weights = load_file(tmp_path / "m.safetensors")
    weights["head.weight"] = weights["head.weight"].to(dtype)
    save_file(weights, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=f"m.safetensors: tensor head.weight {message}"):
        load_checkpoint(path)
    (entry,) = catalog.scan(tmp_path)
    assert not entry.usable and f"tensor head.weight {message}" in entry.error


# ------------------------------------------------------------------ concurrent description writers
def test_concurrent_description_updates_lose_nothing(tmp_path):
    path = make_tiny_checkpoint(tmp_path, "c")

    def writer(tag: str) -> None:
        for i in range(50):
            modify_description(path, lambda d: d["metrics"].setdefault("runs", []).append(f"{tag}{i}"))

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    runs = json.loads(path.read_text())["metrics"]["runs"]
    assert sorted(runs) == sorted(f"{tag}{i}" for tag in "ab" for i in range(50))
    assert [r for r in runs if r.startswith("a")] == [f"a{i}" for i in range(50)]  # each writer's order kept


def test_concurrent_evaluations_all_recorded(tmp_path):
    path = make_tiny_checkpoint(tmp_path, "c")

    def evaluate(first: int) -> None:
        for n in range(first, first + 20):
            record_result(path, {"sampler": "ddim", "steps": 10, "eta": 0.0, "num_samples": n, "fid": float(n)},
                          protocol=False)

    threads = [threading.Thread(target=evaluate, args=(first,)) for first in (100, 200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    evaluations = json.loads(path.read_text())["metrics"]["evaluations"]
    assert sorted(r["num_samples"] for r in evaluations) == list(range(100, 120)) + list(range(200, 220))
    update_description(path, metrics={"fid": 1.0})  # a one-level merge keeps them too
    assert len(json.loads(path.read_text())["metrics"]["evaluations"]) == 40


def test_the_file_lock_excludes_another_holder(tmp_path):
    target = tmp_path / "d.json"
    order = []

    def second() -> None:
        with file_lock(target):
            order.append("second")

    with file_lock(target):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append("first")
    t.join()
    assert order == ["first", "second"]


# ----------------------------------------------------------------------- kills while saving state
class Killed(BaseException):
    """The process dying at this point (nothing catches it)."""


def test_a_kill_between_tensors_and_manifest_resumes_exactly(tmp_path, monkeypatch):
    from diffusion_core import training

    images = random_images(8, 16, seed=2)
    exp = tiny_experiment(epochs=2, batch_size=4)  # 2 steps per epoch, 4 in all
    opts = dict(progress=False, log_every=1)
    whole = Trainer(exp, images, tmp_path / "whole", RunOptions(**opts))
    whole.run()

    run = tmp_path / "run"
    Trainer(exp, images, run, RunOptions(max_steps=2, **opts)).run()  # state of step 2
    saved = load_file(run / "state-00000002.safetensors")
    real_write_json = training.write_json

    def dies_at_the_manifest(path, obj):
        if Path(path).name == "state.json":
            raise Killed()
        return real_write_json(path, obj)

    later = Trainer(exp, images, run, RunOptions(max_steps=3, **opts))
    assert later.resume() and later.step == 2
    monkeypatch.setattr(training, "write_json", dies_at_the_manifest)
    with pytest.raises(Killed):
        later.run()  # trains step 3, logs it, writes state-00000003 and dies before the manifest
    monkeypatch.setattr(training, "write_json", real_write_json)
    assert (run / "state-00000003.safetensors").is_file()
    assert json.loads((run / "state.json").read_text())["step"] == 2

    resumed = Trainer(exp, images, run, RunOptions(**opts))
    assert resumed.resume() and resumed.step == 2  # the manifest's step with the manifest's tensors
    for k, v in resumed.network.state_dict().items():
        assert torch.equal(v, saved[f"model.{k}"]), k
    resumed.run()
    assert sorted(p.name for p in run.glob("state*")) == ["state-00000004.safetensors", "state.json"]
    for (k, va), vb in zip(whole.network.state_dict().items(), resumed.network.state_dict().values()):
        assert torch.equal(va, vb), k
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # step 3 of the killed run is not logged twice


def test_a_state_that_does_not_match_its_manifest_is_refused(tmp_path):
    images = random_images(8, 16)
    exp = tiny_experiment(epochs=1, batch_size=4)
    Trainer(exp, images, tmp_path, RunOptions(progress=False)).run()
    tensors = tmp_path / json.loads((tmp_path / "state.json").read_text())["tensors"]
    data = tensors.read_bytes()
    tensors.write_bytes(data[: len(data) // 2])  # half a file
    with pytest.raises(CheckpointError, match=f"{tensors.name} does not match the SHA-256 that state.json records"):
        Trainer(exp, images, tmp_path, RunOptions(progress=False)).resume()
    tensors.unlink()
    with pytest.raises(CheckpointError, match=f"state.json names {tensors.name}, which is missing"):
        Trainer(exp, images, tmp_path, RunOptions(progress=False)).resume()
    manifest = json.loads((tmp_path / "state.json").read_text())
    (tmp_path / "state.json").write_text(json.dumps(dict(manifest, tensors="../model.safetensors")))
    with pytest.raises(CheckpointError, match="not a training state's tensors file"):
        Trainer(exp, images, tmp_path, RunOptions(progress=False)).resume()


def test_a_state_of_the_earlier_format_still_resumes(tmp_path):
    images = random_images(8, 16)
    exp = tiny_experiment(epochs=2, batch_size=4)
    Trainer(exp, images, tmp_path, RunOptions(progress=False, max_steps=2)).run()
    manifest = json.loads((tmp_path / "state.json").read_text())
    (tmp_path / manifest.pop("tensors")).rename(tmp_path / "state.safetensors")
    del manifest["sha256"]
    (tmp_path / "state.json").write_text(json.dumps(manifest))
    resumed = Trainer(exp, images, tmp_path, RunOptions(progress=False))
    assert resumed.resume() and resumed.step == 2


def test_training_tensors_are_not_listed_as_stray_weights(tmp_path):
    make_tiny_checkpoint(tmp_path, "good")
    save_file({"x": torch.zeros(1)}, tmp_path / "state-00000007.safetensors")
    save_file({"x": torch.zeros(1)}, tmp_path / "state-x.safetensors")
    assert {e.path.name: e.usable for e in catalog.scan(tmp_path)} == {"good.json": True, "state-x.safetensors": False}


# ------------------------------------------------------------------------------ crash leftovers
def test_a_dead_writers_temporary_goes_at_the_next_write(tmp_path):
    target = tmp_path / "d.json"
    dead = tmp_path / ".d.json.abc123.tmp"
    live = tmp_path / ".d.json.def456.tmp"  # another writer, still writing
    other = tmp_path / ".e.json.ghi789.tmp"  # a dead writer of another file
    for p in (dead, live, other):
        p.write_bytes(b"half")
    an_hour_ago = time.time() - 3600
    os.utime(dead, (an_hour_ago, an_hour_ago))
    os.utime(other, (an_hour_ago, an_hour_ago))
    write_json(target, {"a": 1})
    assert not dead.exists() and live.exists() and other.exists()
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in remove_temporaries(tmp_path)) == [live.name, other.name]


def test_a_training_run_clears_what_a_killed_one_left(tmp_path):
    images = random_images(8, 16)
    exp = tiny_experiment(epochs=2, batch_size=4)
    Trainer(exp, images, tmp_path, RunOptions(progress=False, max_steps=2)).run()
    (tmp_path / ".state-00000003.safetensors.x1.tmp").write_bytes(b"half")
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / ".epoch_0002.png.x2.tmp").write_bytes(b"half")
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "loss": 1.0}) + "\n" + '{"step": 4, "lo')  # logged, then killed mid-line
    resumed = Trainer(exp, images, tmp_path, RunOptions(progress=False))
    assert resumed.resume()
    resumed.run()
    assert not list(tmp_path.rglob("*.tmp"))
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 4]  # the epoch ends; step 3 and the cut line of the killed run are gone


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="tells a folder's descriptor through /proc")
def test_atomic_writes_flush_file_and_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.path.isdir(f"/proc/self/fd/{fd}")), real(fd)))
    write_json(tmp_path / "d.json", {"a": 1})
    assert synced == [False, True]  # the file, then its folder's entry


# --------------------------------------------------------------------- environment switches
@pytest.mark.parametrize("value, locked", [
    (None, False), ("", False), ("0", False), ("false", False), ("Off", False), (" no ", False),
    ("1", True), ("true", True), ("True", True), ("TRUE", True), ("on", True), ("yes", True),
    ("2", True), ("enabled", True), ("ture", True),  # unrecognised: the safe side
])
def test_the_folder_lock_fails_closed(monkeypatch, value, locked):
    if value is None:
        monkeypatch.delenv(settings.LOCK_FOLDERS_ENV, raising=False)
    else:
        monkeypatch.setenv(settings.LOCK_FOLDERS_ENV, value)
    assert settings.folders_locked() is locked
    from explorer_ui import widgets
    assert widgets.folder_input_allowed() is not locked


def test_env_flag_reads_words_and_warns_on_others(monkeypatch, caplog):
    monkeypatch.setenv("X_FLAG", "maybe")
    assert settings.env_flag("X_FLAG", default=True, closed=False) is False
    assert "X_FLAG='maybe' is neither on" in caplog.text
    monkeypatch.setenv("X_FLAG", "OFF")
    assert settings.env_flag("X_FLAG", default=True, closed=True) is False
    monkeypatch.delenv("X_FLAG")
    assert settings.env_flag("X_FLAG", default=True, closed=False) is True


# ----------------------------------------------------------------------------- the app itself
@pytest.mark.parametrize("page", ["experiments", "sample"])
def test_the_app_stays_up_beside_hostile_descriptions(tmp_path, monkeypatch, page):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    monkeypatch.setattr(catalog, "RESULTS_FOLDER", tmp_path / "no-results")
    folder = tmp_path / "ck"
    good = make_tiny_checkpoint(folder, "good")
    for name in ("zero_heads", "infinite_width", "huge_integer"):
        hostile(folder, good, name, HOSTILE[name][0])
    monkeypatch.setenv("DIFFUSION_EXPLORER_CHECKPOINTS", str(folder))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    warnings = " ".join(w.value for w in at.warning)
    if page == "experiments":
        assert "attention_heads must be an integer from 1 to 64" in warnings
        assert "widths[0] must be an integer from 1 to 2048, got inf" in warnings
        assert "Exceeds the limit (4300 digits)" in warnings
        assert list(at.dataframe[0].value["name"]) == ["good"]
    else:
        assert at.selectbox(key="sample_checkpoint").options == ["good"]
        assert len(at.image) >= 1
