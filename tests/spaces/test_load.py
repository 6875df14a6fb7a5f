"""Tests for spaces/load.py and spaces/space.py: study files into checked `StudySpec` objects."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from spaces import FloatParam, IntParam, SearchSettings, builtin_studies, load_study, resolve_study
from spaces.load import BUILTIN_DIR

# A small, valid study; each error test changes one thing in a deep copy.
VALID = {
    "name": "tiny",
    "data": {"source": "digits"},
    "model": {"name": "mlp", "hidden_layers": 1, "units": 8},
    "training": {"max_epochs": 3, "batch_size": 16, "learning_rate": 0.01},
    "search": {"n_folds": 2, "n_trials": 4, "sampler": "random", "pruner": "none", "seed": 7},
    "space": {
        "l1": {"low": 1e-6, "high": 1e-3, "log": True, "allow_off": True, "default": "off"},
        "dropout": {"low": 0.0, "high": 0.5, "default": 0.1},
        "patience": {"type": "int", "low": 2, "high": 8, "step": 2, "default": 4},
    },
}


def write_study(tmp_path: Path, study: dict | str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(study if isinstance(study, str) else yaml.safe_dump(study, sort_keys=False))
    return path


def changed(edit) -> dict:
    study = copy.deepcopy(VALID)
    edit(study)
    return study


def test_builtin_studies_lists_digits():
    assert "digits" in builtin_studies()
    assert builtin_studies() == sorted(builtin_studies())


def test_load_study_digits_values():
    spec = load_study("digits")
    assert spec.name == "digits"
    assert spec.path == BUILTIN_DIR / "digits.yaml"
    assert spec.data == {"source": "digits"}
    assert spec.model["name"] == "mlp"
    assert spec.model["hidden_layers"] == 5
    assert spec.model["units"] == 500
    assert spec.training == {"max_epochs": 30, "batch_size": 64, "learning_rate": 1e-3}
    assert spec.search == SearchSettings(
        n_folds=3, n_trials=30, sampler="tpe", pruner="median", seed=0
    )
    assert spec.space.names == ("l1", "l2", "dropout", "augment", "patience")


def test_load_study_digits_params():
    params = {p.name: p for p in load_study("digits").space.params}
    assert params["l1"] == FloatParam("l1", 1e-7, 1e-3, log=True, off=True, default=None)
    assert params["l2"] == FloatParam("l2", 1e-6, 1e-2, log=True, off=True, default=1e-4)
    assert params["dropout"] == FloatParam("dropout", 0.0, 0.6, default=0.2)
    assert params["augment"] == FloatParam("augment", 0.0, 1.0, default=0.0)
    assert params["patience"] == IntParam("patience", 2, 10, step=1, default=5)


def test_load_study_digits_defaults():
    # l1 defaults to "off" (0.0), l2 to on at 1e-4.
    assert load_study("digits").space.defaults() == {
        "l1": 0.0, "l2": 1e-4, "dropout": 0.2, "augment": 0.0, "patience": 5,
    }


def test_load_study_digits_switches():
    switches = {p.name: p.switch for p in load_study("digits").space.params
                if isinstance(p, FloatParam) and p.off}
    assert switches == {"l1": "l1_on", "l2": "l2_on"}


def test_load_study_by_path_equals_by_name():
    assert load_study(BUILTIN_DIR / "digits.yaml") == load_study("digits")


def test_space_to_dict_is_json_round_trip():
    space = load_study("digits").space
    as_dict = space.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict["l1"] == {"type": "float", "low": 1e-7, "high": 1e-3, "log": True,
                             "off": True, "default": None}
    assert as_dict["patience"] == {"type": "int", "low": 2, "high": 10, "step": 1, "log": False,
                                   "default": 5}


def test_load_study_valid_file(tmp_path):
    spec = load_study(write_study(tmp_path, VALID))
    assert spec.name == "tiny"
    assert spec.search == SearchSettings(n_folds=2, n_trials=4, sampler="random", pruner="none",
                                         seed=7)
    assert spec.training == {"max_epochs": 3, "batch_size": 16, "learning_rate": 0.01}
    assert spec.space.params[2] == IntParam("patience", 2, 8, step=2, default=4)
    assert spec.space.defaults() == {"l1": 0.0, "dropout": 0.1, "patience": 4}


def test_load_study_name_defaults_to_file_stem(tmp_path):
    study = changed(lambda s: s.pop("name"))
    assert load_study(write_study(tmp_path, study, "my_study.yaml")).name == "my_study"


@pytest.mark.parametrize("name", ["tiny", "digits-v2.1", "A_b-3", "x.."])
def test_load_study_plain_names_are_accepted(tmp_path, name):
    assert load_study(write_study(tmp_path, changed(lambda s: s.update(name=name)))).name == name


def test_load_study_name_from_a_file_name_that_is_not_plain_says_so(tmp_path):
    path = write_study(tmp_path, changed(lambda s: s.pop("name")), "my study.yaml")
    with pytest.raises(ValueError, match=r"'name'='my study' \(from the file name; set 'name:' "
                                         r"to choose another\) is not a plain name.* 'my_study'"):
        load_study(path)


def test_load_study_binary_file_names_file_and_byte(tmp_path):
    path = tmp_path / "junk.yaml"
    path.write_bytes(b"\xff\xfe\x00 not text")
    with pytest.raises(ValueError, match=r"not a text file \(byte 0xff at offset 0 is not "
                                         r"UTF-8\)") as info:
        load_study(path)
    assert str(info.value).startswith(f"{path}: ")


def test_load_study_search_defaults(tmp_path):
    spec = load_study(write_study(tmp_path, changed(lambda s: s.pop("search"))))
    assert spec.search == SearchSettings()


@pytest.mark.parametrize("spelling", ["1e-4", "1E-4", "1.0e-4", "0.0001"])
def test_load_study_reads_exponent_without_dot_as_float(tmp_path, spelling):
    # PyYAML (YAML 1.1) reads `1e-4` as the string "1e-4".
    assert isinstance(yaml.safe_load("x: 1e-4")["x"], str)
    text = f"""
model: {{name: mlp}}
training: {{learning_rate: {spelling}}}
space:
  l2: {{low: {spelling}, high: 1e-2, log: true, default: {spelling}}}
"""
    spec = load_study(write_study(tmp_path, text))
    (l2,) = spec.space.params
    assert l2.low == pytest.approx(1e-4)
    assert l2.default == pytest.approx(1e-4)
    assert l2.high == pytest.approx(1e-2)
    assert type(l2.low) is float and type(l2.high) is float and type(l2.default) is float
    assert spec.training["learning_rate"] == pytest.approx(1e-4)
    assert type(spec.training["learning_rate"]) is float


@pytest.mark.parametrize("spelling", ["off", "Off", "'off'", "no", "false"])
def test_load_study_default_off_spellings(tmp_path, spelling):
    text = f"""
model: {{name: mlp}}
space:
  l1: {{low: 1e-6, high: 1e-3, log: true, allow_off: true, default: {spelling}}}
"""
    (l1,) = load_study(write_study(tmp_path, text)).space.params
    assert l1.off is True
    assert l1.default is None


def test_load_study_allow_off_with_value_default(tmp_path):
    text = """
model: {name: mlp}
space:
  l2: {low: 1e-6, high: 1e-3, log: true, allow_off: true, default: 1e-5}
"""
    spec = load_study(write_study(tmp_path, text))
    assert spec.space.params[0] == FloatParam("l2", 1e-6, 1e-3, log=True, off=True, default=1e-5)
    assert spec.space.defaults() == {"l2": pytest.approx(1e-5)}


def test_load_study_integral_floats_become_ints(tmp_path):
    def edit(s):
        s["search"].update(n_folds=3.0, n_trials=5.0, seed=1.0)
        s["training"]["max_epochs"] = 4.0
        s["space"]["patience"].update(low=2.0, high=8.0, default=4.0)

    spec = load_study(write_study(tmp_path, changed(edit)))
    assert (spec.search.n_folds, spec.search.n_trials, spec.search.seed) == (3, 5, 1)
    assert type(spec.search.n_folds) is int
    assert type(spec.search.n_trials) is int
    assert type(spec.training["max_epochs"]) is int
    patience = spec.space.params[2]
    assert (patience.low, patience.high, patience.default) == (2, 8, 4)
    assert all(type(v) is int for v in (patience.low, patience.high, patience.default))


def _set(section, key, value):
    def edit(study):
        study[section][key] = value
    return edit


def _set_param(param, key, value):
    def edit(study):
        study["space"].setdefault(param, {})[key] = value
    return edit


def _pop_param_key(param, key):
    def edit(study):
        del study["space"][param][key]
    return edit


BAD_STUDIES = [
    # (id, edit, error type, text the message must contain)
    ("unknown top-level key", lambda s: s.update(serach={"n_folds": 3}), ValueError, "'serach'"),
    ("unknown param", lambda s: s["space"].update(l3={"low": 0.0, "high": 1.0}), ValueError,
     "'l3'"),
    ("unknown key in param", _set_param("dropout", "scale", "log"), ValueError, "'scale'"),
    ("low > high", lambda s: s["space"]["dropout"].update(low=0.5, high=0.2, default=0.3),
     ValueError, "'space.dropout' has low=0.5 > high=0.2"),
    ("int low > high", lambda s: s["space"]["patience"].update(low=8, high=2, default=4),
     ValueError, "'space.patience' has low=8 > high=2"),
    ("log with low 0", lambda s: s["space"]["l1"].update(low=0.0), ValueError,
     "'space.l1' uses log=True"),
    ("log with negative low", lambda s: s["space"].update(
        l2={"low": -1e-3, "high": 1e-2, "log": True}), ValueError, "space.l2.low"),
    ("string low", _set_param("dropout", "low", "abc"), TypeError, "'space.dropout.low'"),
    ("string high", _set_param("dropout", "high", "0.5x"), TypeError, "'space.dropout.high'"),
    ("bool for int low", _set_param("patience", "low", True), TypeError, "'space.patience.low'"),
    ("bool for int default", _set_param("patience", "default", True), TypeError,
     "'space.patience.default'"),
    ("float for int high", _set_param("patience", "high", 8.5), TypeError,
     "'space.patience.high'"),
    ("string for int step", _set_param("patience", "step", "2"), TypeError,
     "'space.patience.step'"),
    ("int step 0", _set_param("patience", "step", 0), ValueError, "'space.patience.step'"),
    ("int log with step", _set_param("patience", "log", True), ValueError,
     "'space.patience' uses log=True, so step must be 1"),
    ("bool for float low", _set_param("dropout", "low", True), TypeError, "'space.dropout.low'"),
    ("string for log", _set_param("dropout", "log", "yes"), TypeError, "'space.dropout.log'"),
    ("string for allow_off", _set_param("l1", "allow_off", "true"), TypeError,
     "'space.l1.allow_off'"),
    ("dropout high 1", _set_param("dropout", "high", 1.0), ValueError, "'space.dropout.high'"),
    ("dropout high 1.5", _set_param("dropout", "high", 1.5), ValueError, "'space.dropout.high'"),
    ("augment high above 1", lambda s: s["space"].update(augment={"low": 0.0, "high": 1.1}),
     ValueError, "'space.augment.high'"),
    ("patience low 0", _set_param("patience", "low", 0), ValueError, "'space.patience.low'"),
    ("learning_rate low 0", lambda s: s["training"].pop("learning_rate") and s["space"].update(
        learning_rate={"low": 0.0, "high": 0.1}), ValueError, "'space.learning_rate.low'"),
    ("default above high", _set_param("dropout", "default", 0.9), ValueError,
     "'space.dropout.default'"),
    ("default below low", _set_param("l1", "default", 1e-9), ValueError, "'space.l1.default'"),
    ("int default outside", _set_param("patience", "default", 9), ValueError,
     "'space.patience.default'"),
    ("default off without allow_off", _set_param("dropout", "default", "off"), ValueError,
     "'space.dropout.default' is off"),
    ("default off after allow_off false", _set_param("l1", "allow_off", False), ValueError,
     "'space.l1.default' is off"),
    ("allow_off on int", _set_param("patience", "allow_off", True), ValueError, "'allow_off'"),
    ("missing low", _pop_param_key("dropout", "low"), ValueError, "'space.dropout' needs 'low'"),
    ("missing high", _pop_param_key("dropout", "high"), ValueError,
     "'space.dropout' needs 'high'"),
    ("entry not a mapping", lambda s: s["space"].update(dropout=0.3), TypeError,
     "'space.dropout'"),
    ("int type for float param", _set_param("dropout", "type", "int"), ValueError,
     "'space.dropout.type'"),
    ("float type for int param", _set_param("patience", "type", "float"), ValueError,
     "'space.patience.type'"),
    ("param in training and space", _set("training", "dropout", 0.2), ValueError,
     "'dropout' is both fixed in 'training' and searched in 'space'"),
    ("missing space", lambda s: s.pop("space"), ValueError, "'space'"),
    ("empty space", lambda s: s.update(space={}), ValueError, "'space'"),
    ("space not a mapping", lambda s: s.update(space=["l1"]), ValueError, "'space'"),
    ("unknown training key", _set("training", "epochs", 3), ValueError, "'epochs'"),
    ("training max_epochs 0", _set("training", "max_epochs", 0), ValueError,
     "'training.max_epochs'"),
    ("training string batch_size", _set("training", "batch_size", "big"), TypeError,
     "'training.batch_size'"),
    ("training learning_rate 0", _set("training", "learning_rate", 0.0), ValueError,
     "'training.learning_rate'"),
    ("training negative l2", _set("training", "l2", -0.1), ValueError, "'training.l2'"),
    ("training not a mapping", lambda s: s.update(training=[1]), TypeError, "'training'"),
    ("n_folds 1", _set("search", "n_folds", 1), ValueError, "'n_folds'=1"),
    ("n_folds 21", _set("search", "n_folds", 21), ValueError, "n_folds"),
    ("n_folds string", _set("search", "n_folds", "three"), TypeError, "n_folds"),
    ("n_trials 0", _set("search", "n_trials", 0), ValueError, "n_trials"),
    ("negative seed", _set("search", "seed", -1), ValueError, "seed"),
    ("seed numpy cannot take", _set("search", "seed", 2**32), ValueError,
     "'seed'=4294967296 is out of range; expected an integer in [0, 4294967295]"),
    ("unknown sampler", _set("search", "sampler", "grid"), ValueError, "sampler"),
    ("unknown pruner", _set("search", "pruner", "patient"), ValueError, "pruner"),
    ("string enqueue_defaults", _set("search", "enqueue_defaults", "no"), TypeError,
     "enqueue_defaults"),
    ("unknown search key", _set("search", "n_fold", 3), ValueError, "'n_fold'"),
    ("tpe not a mapping", _set("search", "tpe", True), TypeError, "'tpe' must be a mapping"),
    ("unknown tpe option", _set("search", "tpe", {"seed": 3}), ValueError,
     "unknown key 'seed' in 'tpe'"),
    ("string tpe flag", _set("search", "tpe", {"multivariate": "yes"}), TypeError,
     "'tpe.multivariate' must be true or false"),
    ("tpe group without multivariate", _set("search", "tpe", {"group": True,
                                                              "multivariate": False}),
     ValueError, "'tpe.group' needs 'tpe.multivariate': true"),
    ("negative tpe startup", _set("search", "tpe", {"n_startup_trials": -1}), ValueError,
     "'tpe.n_startup_trials'=-1"),
    ("model without name", lambda s: s.update(model={"units": 3}), ValueError, "'model'"),
    ("data without source", lambda s: s.update(data={"root": "x"}), ValueError, "'data'"),
    ("empty name", lambda s: s.update(name=""), TypeError, "'name'"),
    ("numeric name", lambda s: s.update(name=3), TypeError, "'name'"),
    ("name with a slash", lambda s: s.update(name="a/b"), ValueError,
     "'name'='a/b' is not a plain name; expected letters, digits, '_', '-' and '.' (not first)"),
    ("name going up", lambda s: s.update(name=".."), ValueError, "'name'='..' is not a plain"),
    ("name with a backslash", lambda s: s.update(name="a\\b"), ValueError, "not a plain name"),
    ("hidden name", lambda s: s.update(name=".tiny"), ValueError, "not a plain name"),
]


@pytest.mark.parametrize(("edit", "error", "key"), [b[1:] for b in BAD_STUDIES],
                         ids=[b[0] for b in BAD_STUDIES])
def test_load_study_bad_file_names_file_and_key(tmp_path, edit, error, key):
    path = write_study(tmp_path, changed(edit))
    with pytest.raises(error, match=re.escape(key)) as info:
        load_study(path)
    assert type(info.value) is error
    assert str(info.value).startswith(f"{path}: ")


def test_load_study_reads_tpe_options(tmp_path):
    options = {"multivariate": True, "group": True, "n_startup_trials": 5.0}
    spec = load_study(write_study(tmp_path, changed(_set("search", "tpe", options))))
    assert spec.search.tpe == {"multivariate": True, "group": True, "n_startup_trials": 5}
    assert type(spec.search.tpe["n_startup_trials"]) is int
    assert SearchSettings().tpe == {}


def test_load_study_unknown_key_lists_valid_keys(tmp_path):
    path = write_study(tmp_path, changed(_set_param("dropout", "scale", "log")))
    with pytest.raises(ValueError, match="Valid keys: allow_off, default, high, log, low, type"):
        load_study(path)


def test_load_study_unknown_param_lists_searchable(tmp_path):
    path = write_study(tmp_path, changed(lambda s: s["space"].update(l3={"low": 0, "high": 1})))
    with pytest.raises(ValueError, match="Searchable: l1, l2, dropout, augment, weight_decay, "
                                         "label_smoothing, mixup, cutmix, learning_rate, "
                                         "patience, batch_size"):
        load_study(path)


# The later regularizers: a study opts in by naming them in its space.
OPT_IN = {
    "weight_decay": {"low": 1.0e-3, "high": 0.3, "log": True, "allow_off": True, "default": "off"},
    "label_smoothing": {"low": 0.01, "high": 0.3, "allow_off": True, "default": 0.1},
    "mixup": {"low": 0.1, "high": 1.0, "log": True, "allow_off": True},
    "cutmix": {"low": 0.1, "high": 2.0, "allow_off": True, "default": "off"},
}


def test_builtin_studies_keep_the_four_regularizers_and_a_study_opts_in_to_the_others(tmp_path):
    for name in builtin_studies():
        assert not set(OPT_IN) & set(load_study(name).space.names), name
    path = write_study(tmp_path, changed(lambda s: s["space"].update(OPT_IN)))
    space = load_study(path).space
    assert set(OPT_IN) <= set(space.names)
    assert all(p.off for p in space.params if p.name in OPT_IN)
    assert space.defaults()["label_smoothing"] == 0.1 and space.defaults()["cutmix"] == 0.0


@pytest.mark.parametrize(("key", "entry", "allowed"), [
    ("label_smoothing", {"low": 0.0, "high": 1.0}, r"in \[0, 1\)"),
    ("weight_decay", {"low": 0.0, "high": 2.0}, r"in \[0, 1\]"),
    ("mixup", {"low": -0.1, "high": 1.0}, r"in \[0, 10\]"),
    ("cutmix", {"low": 0.5, "high": 11.0}, r"in \[0, 10\]"),
])
def test_load_study_later_regularizers_are_range_checked(tmp_path, key, entry, allowed):
    path = write_study(tmp_path, changed(lambda s: s["space"].update({key: entry})))
    with pytest.raises(ValueError, match=rf"space\.{key}\.(low|high).*{allowed}"):
        load_study(path)


def test_load_study_log_error_suggests_fix(tmp_path):
    path = write_study(tmp_path, changed(lambda s: s["space"]["l1"].update(low=0.0)))
    with pytest.raises(ValueError, match="log=True, so low must be > 0; got low=0") as info:
        load_study(path)
    assert "allow_off" in str(info.value)


@pytest.mark.parametrize(
    "text",
    ["space: {l1: {low: 1, high: [}", "model:\n  name: mlp\n space: 3\n", "a: b: c", "\tx: 1"],
)
def test_load_study_invalid_yaml_names_file(tmp_path, text):
    path = write_study(tmp_path, text)
    with pytest.raises(ValueError, match="not valid YAML") as info:
        load_study(path)
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize("text", ["- l1\n- l2\n", "just a string\n", "42\n"])
def test_load_study_top_level_not_mapping(tmp_path, text):
    path = write_study(tmp_path, text)
    with pytest.raises(TypeError, match="'study file' must be a mapping") as info:
        load_study(path)
    assert str(info.value).startswith(f"{path}: ")


def test_load_study_empty_file(tmp_path):
    path = write_study(tmp_path, "")
    with pytest.raises(ValueError, match="'model'") as info:
        load_study(path)
    assert str(info.value).startswith(f"{path}: ")


def test_resolve_study_builtin_name():
    assert resolve_study("digits") == BUILTIN_DIR / "digits.yaml"


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_resolve_study_existing_path(tmp_path, suffix):
    path = write_study(tmp_path, VALID, f"s{suffix}")
    assert resolve_study(str(path)) == path


def test_resolve_study_unknown_name_lists_known():
    with pytest.raises(LookupError, match="unknown study 'nope'; known studies: .*digits"):
        resolve_study("nope")


def test_resolve_study_folder_says_it_is_a_folder(tmp_path):
    (tmp_path / "studies.yaml").mkdir()
    with pytest.raises(ValueError, match="studies.yaml' is a folder; expected a study .yaml file"):
        resolve_study(str(tmp_path / "studies.yaml"))


def test_resolve_study_missing_file_names_it(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(LookupError, match=re.escape(str(missing))):
        load_study(missing)


def test_search_settings_n_folds_error_names_key():
    with pytest.raises(ValueError, match="'n_folds'=1"):
        SearchSettings(n_folds=1)


def test_search_settings_seed_takes_the_largest_numpy_seed():
    assert SearchSettings(seed=2**32 - 1).seed == 4294967295
