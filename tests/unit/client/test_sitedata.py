from client.sitedata import VALIDATION_PERCENT, validation_patients


def test_validation_patients_are_stable_and_about_the_right_share():
    patients = {f"patient-{i}" for i in range(1000)}
    chosen = validation_patients(patients)
    assert abs(len(chosen) / len(patients) - VALIDATION_PERCENT / 100) < 0.05
    more = validation_patients(patients | {f"new-{i}" for i in range(100)})
    assert chosen <= more  # adding patients never moves an old one into training


def test_small_sites_still_get_one_validation_patient():
    for n in range(2, 12):
        patients = {f"p{n}-{i}" for i in range(n)}
        assert 1 <= len(validation_patients(patients)) < n or n < 2
    assert validation_patients({"only"}) <= {"only"}
