"""sanity_check.py's own errors; the check itself needs stories42M.pt, which the test machine may not have."""
from pathlib import Path

import sanity_check


def test_model_with_a_smaller_vocabulary_is_one_clear_error(capsys, asset):
    model = str(asset("stories260K.bin"))  # 512 pieces; the check feeds ids up to 17953
    assert sanity_check.main(model, str(asset("sanity_check.data"))) == 1
    err = capsys.readouterr().err
    assert err == f"error: {model}: a vocabulary of 512 pieces, but the check feeds token ids up to 17953: it is " \
                  "made for stories42M.pt (32000 pieces)\n"


def test_corrupt_expected_outputs_are_one_clear_error(tmp_path: Path, capsys, asset, model_path: str):
    data = tmp_path / "sanity_check.data"
    data.write_bytes(asset("sanity_check.data").read_bytes()[:10_000])
    assert sanity_check.main(model_path, str(data)) == 1
    assert capsys.readouterr().err.startswith(f"error: {data}: corrupt: a damaged or truncated zip archive")
