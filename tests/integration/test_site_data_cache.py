"""Decrypted site data stays cached per site while a worker serves several virtual sites."""
from client import sitedata
from client.keys import load_keys
from client.sitedata import cached_site_data
from client.store import SiteStore
from client.virtual_site import ensure_virtual_site


def _open(site_dir):
    return SiteStore.open(site_dir, load_keys(site_dir))


def test_sites_served_in_turn_are_decrypted_once_each(tmp_path):
    sites = [ensure_virtual_site(tmp_path, partition_id=i, seed=5, patients=6) for i in range(3)]
    first = [cached_site_data(site, _open(site), 16) for site in sites]
    for _ in range(2):  # a simulation worker handing out rounds to the sites in turn
        again = [cached_site_data(site, _open(site), 16) for site in sites]
        assert all(a is b for a, b in zip(again, first))
    assert len({id(data) for data in first}) == 3
    resized = cached_site_data(sites[0], _open(sites[0]), 24)  # another image size replaces the site's entry
    assert resized.train_images.shape[-1] == 24
    assert cached_site_data(sites[0], _open(sites[0]), 24) is resized
    assert cached_site_data(sites[1], _open(sites[1]), 16) is first[1]


def test_the_cache_holds_a_bounded_number_of_sites(tmp_path, monkeypatch):
    monkeypatch.setattr(sitedata, "CACHED_SITES", 2)
    sites = [ensure_virtual_site(tmp_path, partition_id=i, seed=5, patients=6) for i in range(3)]
    first = [cached_site_data(site, _open(site), 16) for site in sites]
    assert len(sitedata._CACHE) == 2
    assert cached_site_data(sites[0], _open(sites[0]), 16) is not first[0]  # the oldest was dropped
    assert cached_site_data(sites[2], _open(sites[2]), 16) is first[2]
