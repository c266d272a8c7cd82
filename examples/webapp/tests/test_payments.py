from src.payments import charge


def test_charge():
    assert charge(500)["status"] == "succeeded"
