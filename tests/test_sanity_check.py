"""sanity_check.py's own errors; the check itself needs stories42M.pt, which the test machine may not have."""
from pathlib import Path

import sanity_check


def test_model_with_a_smaller_vocabulary_is_one_clear_error(capsys, asset):
    model = str(asset("stories260K.bin"))  # 512 pieces; the check feeds ids up to 17953
    data = str(asset("sanity_check.data"))
    capsys.readouterr()  # a first fetch into the tests' cache prints its progress bar
    assert sanity_check.main(model, data) == 1
    err = capsys.readouterr().err
    assert err == f"error: {model}: a vocabulary of 512 pieces, but the check feeds token ids up to 17953: it is " \
                  "made for stories42M.pt (32000 pieces)\n"


def test_corrupt_expected_outputs_are_one_clear_error(tmp_path: Path, capsys, asset, model_path: str):
    data = tmp_path / "sanity_check.data"
    data.write_bytes(asset("sanity_check.data").read_bytes()[:10_000])
    assert sanity_check.main(model_path, str(data)) == 1
    assert capsys.readouterr().err.startswith(f"error: {data}: corrupt: a damaged or truncated zip archive")


def test_missing_files_are_fetched_by_the_check(tmp_path: Path, capsys, asset, asset_cache: Path, monkeypatch):
    """sanity_check.main fetches its two files before reading them (load_pretrained itself fetches nothing)."""
    asset("stories260K.bin"), asset("sanity_check.data")  # into asset_cache, the mirror here
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINLLAMA_ASSET_MIRROR", str(asset_cache))
    assert sanity_check.main("stories260K.bin", "sanity_check.data") == 1  # fetched, then refused: 512 pieces
    assert "a vocabulary of 512 pieces" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sanity_check.data", "stories260K.bin"]
