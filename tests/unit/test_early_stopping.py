import pytest

from dtrain.early_stopping import EarlyStopping


def test_patience_counts_evaluations_without_improvement():
    es = EarlyStopping("val_loss", "min", patience=2)
    assert [es.update({"val_loss": v}) for v in (1.0, 0.8, 0.9, 0.85, 0.7, 0.75, 0.71)] == [
        False, False, False, True, False, False, True]


def test_max_mode_state_round_trip_and_missing_metric():
    es = EarlyStopping("macro_f1", "max", patience=1)
    es.update({"macro_f1": 0.5})
    fresh = EarlyStopping("macro_f1", "max", patience=1)
    fresh.load_state_dict(es.state_dict())
    assert fresh.update({"macro_f1": 0.4}) is True
    with pytest.raises(KeyError, match="early_stopping.metric='macro_f1'"):
        fresh.update({"val_loss": 1.0})
    assert EarlyStopping(None).update({"val_loss": 1.0}) is False
