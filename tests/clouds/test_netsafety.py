"""Outbound safety: endpoints resolving to loopback, private, link-local or other special addresses are refused
unless their network is allowed in settings."""

from __future__ import annotations

import pytest

from apps.core.netsafety import UnsafeURLError, check_address, check_url


@pytest.fixture
def nothing_allowed(settings):
    settings.SKYPORT_ALLOWED_PRIVATE_NETWORKS = []


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://127.0.0.1:5000/v3", "127.0.0.1"),
        ("https://10.0.0.1/", "10.0.0.1"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://[::1]:8774/", "::1"),
        ("https://192.168.1.20/", "192.168.1.20"),
        ("https://[::ffff:127.0.0.1]/", "127.0.0.1"),
        ("https://224.0.0.1/", "224.0.0.1"),
        ("https://0.0.0.0/", "0.0.0.0"),
        ("https://localhost:9696/", "127.0.0.1"),
    ],
)
def test_special_addresses_are_refused_naming_the_address(nothing_allowed, url, address):
    with pytest.raises(UnsafeURLError) as e:
        check_url(url)
    assert address in str(e.value) or (address == "127.0.0.1" and "::1" in str(e.value))
    assert "SKYPORT_ALLOWED_PRIVATE_NETWORKS" in str(e.value)


def test_public_address_passes(nothing_allowed):
    assert check_url("https://93.184.215.14/v3") == "https://93.184.215.14/v3"
    check_address("2606:4700:4700::1111")


def test_allowed_network_lets_the_local_peer_through(settings):
    settings.SKYPORT_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.0/8", "::1/128"]
    check_url("http://127.0.0.1:5000/v3")
    check_url("http://[::1]:5000/v3")
    with pytest.raises(UnsafeURLError, match="10.0.0.1"):
        check_url("http://10.0.0.1:5000/v3")  # only what is listed
    with pytest.raises(UnsafeURLError, match="169.254.169.254"):
        check_url("http://169.254.169.254/")


def test_an_allowed_private_network_covers_only_itself(settings):
    settings.SKYPORT_ALLOWED_PRIVATE_NETWORKS = ["10.1.0.0/16"]
    check_url("https://10.1.2.3/")
    with pytest.raises(UnsafeURLError, match="10.2.0.1"):
        check_url("https://10.2.0.1/")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.org/", "must start with"),
        ("https:///nohost", "no host"),
        ("https://user:pw@93.184.215.14/", "credential fields"),
        ("https://no-such-host.invalid/", "cannot be resolved"),
        ("https://93.184.215.14:99999/", "malformed"),
    ],
)
def test_malformed_or_unresolvable_urls_are_refused(nothing_allowed, url, message):
    with pytest.raises(UnsafeURLError, match=message):
        check_url(url)


def test_credentials_in_the_url_are_not_echoed(nothing_allowed):
    with pytest.raises(UnsafeURLError) as e:
        check_url("https://user:CANARY-pw@93.184.215.14/")
    assert "CANARY" not in str(e.value)
