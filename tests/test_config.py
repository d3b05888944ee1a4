import pytest

from diffusion_core.config import ConfigError, ExperimentConfig, load_experiment

# The seed table, as printed in ../shared/seed-experiments.md (blank cells already filled in).
SEED_TABLE = {
    # name: epochs, samples, augment, lr, wd, size, depth, widths, reported FID
    "ddim_01": (100, 1600, "none", 1e-3, 1e-4, 128, 2, (32, 64, 96, 128), 10.32),
    "ddim_02": (250, 12800, "none", 1e-3, 1e-4, 128, 2, (32, 64, 96, 128), 10.45),
    "ddim_03": (200, 16000, "none", 5e-4, 5e-5, 128, 2, (32, 64, 96, 128), 18.33),
    "ddim_04": (300, 8000, "none", 1e-3, 1e-4, 80, 2, (32, 64, 96, 128), 9.75),
    "ddim_05": (200, 8000, "flip_x2", 1e-3, 1e-4, 80, 2, (32, 64, 96, 128), 9.77),
    "ddim_06": (400, 8000, "flip_x2", 5e-4, 5e-5, 80, 2, (32, 64, 96, 128), 7.93),
    "ddim_07": (300, 12000, "flip_x2", 1e-4, 1e-5, 80, 3, (32, 64, 96, 128, 256), 5.73),
    "ddim_08": (300, 16000, "flip_x2", 5e-5, 5e-6, 80, 4, (32, 64, 96, 128, 256), 5.01),
    "ddim_09": (400, 3200, "flip_x2", 5e-4, 1e-5, 112, 4, (32, 64, 96, 128, 256), 42.72),
    "ddim_10": (400, 6400, "flip_x2", 5e-4, 1e-5, 112, 4, (32, 64, 96, 128, 256), 45.87),
    "ddim_11": (200, 12800, "flip_x2", 5e-4, 1e-5, 112, 4, (32, 64, 96, 128, 256), 56.45),
}


@pytest.mark.parametrize("name", sorted(SEED_TABLE))
def test_ddim_configs_reproduce_the_seed_table(name):
    e = load_experiment(f"experiments/{name}.toml")
    epochs, samples, aug, lr, wd, size, depth, widths, fid = SEED_TABLE[name]
    got = (e.train.epochs, e.data.samples, e.data.augment, e.train.learning_rate, e.train.weight_decay,
           e.network.image_size, e.network.block_depth, e.network.widths, e.reported_fid)
    assert got == (epochs, samples, aug, lr, wd, size, depth, widths, fid)
    assert e.name == name and e.family == "ddim"
    assert e.schedule.kind == "continuous_cosine" and e.train.loss == "l1" and e.train.ema_decay == 0.999


def test_ddpm_config():
    e = load_experiment("experiments/ddpm_01.toml")
    assert (e.train.epochs, e.data.samples, e.train.learning_rate, e.network.image_size, e.network.block_depth,
            e.network.widths) == (100, 3200, 2e-4, 64, 2, (64, 128, 256, 512))
    assert e.schedule.kind == "linear" and e.schedule.num_timesteps == 1000
    assert (e.schedule.beta_start, e.schedule.beta_end) == (1e-4, 0.02) and e.train.loss == "l2"


def test_dict_round_trip():
    e = load_experiment("experiments/ddim_08.toml")
    assert ExperimentConfig.from_dict(e.to_dict()) == e


def test_unknown_key_is_an_error(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text('[train]\nepochs = 3\nlearning_rat = 0.1\n')
    with pytest.raises(ConfigError, match=r"\[train\]: unknown key\(s\) learning_rat"):
        load_experiment(p)
    p.write_text('[trian]\nepochs = 3\n')
    with pytest.raises(ConfigError, match="unknown key"):
        load_experiment(p)


def test_bad_values_and_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_experiment(tmp_path / "missing.toml")
    p = tmp_path / "bad.toml"
    p.write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_experiment(p)
    p.write_text("[network]\nimage_size = 100\n")
    with pytest.raises(ConfigError, match="multiple of 8"):
        load_experiment(p)
    p.write_text("[train]\nlearning_rate = 5\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_experiment(p)


def test_overrides():
    e = load_experiment("experiments/ddim_01.toml").with_overrides(train={"epochs": 3}, network={"image_size": 64})
    assert e.train.epochs == 3 and e.network.image_size == 64 and e.train.learning_rate == 1e-3
