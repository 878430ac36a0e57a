"""One YAML reader: every bad YAML file (settings, dataset, pipeline) is reported in the same words."""

import pytest

from rtdet.data.formats import DataConfigError, load_data_config
from rtdet.data.pipelines import load_pipeline_spec
from rtdet.data.transforms import PipelineConfigError
from rtdet.engine.settings import SettingsError, load_yaml
from rtdet.utils.yaml_file import read_yaml


def test_read_yaml_returns_the_values(tmp_path):
    f = tmp_path / "ok.yaml"
    f.write_text("lr0: 0.01\nnames: [cat, dog]\n")
    assert read_yaml(f) == {"lr0": 0.01, "names": ["cat", "dog"]}
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml(tmp_path / "empty.yaml") is None


def test_read_yaml_names_the_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("a: 1\nb: [1, 2\n")
    with pytest.raises(LookupError, match=r"bad.yaml: line 3: not valid YAML \(.+\)$"):
        read_yaml(f, LookupError)


def test_read_yaml_missing_and_undecodable_files(tmp_path):
    with pytest.raises(ValueError, match="gone.yaml: file not found"):
        read_yaml(tmp_path / "gone.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ValueError, match=r"latin1.yaml: cannot be read as a UTF-8 text file \(UnicodeDecodeError\)"):
        read_yaml(tmp_path / "latin1.yaml")


@pytest.mark.parametrize("load, error", [(load_yaml, SettingsError), (load_data_config, DataConfigError),
                                         (load_pipeline_spec, PipelineConfigError)])
def test_every_reader_words_a_bad_file_the_same(tmp_path, load, error):
    f = tmp_path / "bad.yaml"
    f.write_text("train: [a, b\n")
    with pytest.raises(error) as info:
        load(f)
    assert str(info.value) == str(pytest.raises(ValueError, read_yaml, f).value)
