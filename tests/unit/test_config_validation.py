"""Settings that would crash the node later, or quietly do something else, are refused at start naming the key."""
from __future__ import annotations

import pytest

from node.config import ConfigError, settings_from_mapping


@pytest.mark.parametrize("raw, key", [
    ({"studies": {"quiet_period": float("nan")}}, "studies.quiet_period"),
    ({"node": {"socket_timeout": float("nan")}}, "node.socket_timeout"),  # would silently drop the PDU cap
    ({"retention": {"interval": float("inf")}}, "retention.interval"),
    ({"studies": {"required_phases": ["OTHER"]}}, "studies.required_phases[0]"),
    ({"node": {"ae_title": "LIVERNODE "}}, "node.ae_title"),  # peers' titles are compared stripped
    ({"access": {"allowed_calling_aets": ["CT1 "]}}, "access.allowed_calling_aets[0]"),
    ({"results": {"return_to": {"CT_SCANNER_NUMBER_1": "PACS@10.0.0.1:104"}}}, "results.return_to.CT_SCANNER_NUMBER_1"),
    ({"metrics": {"bind": "not-an-ip.invalid"}}, "metrics.bind"),
    ({"node": {"bind": "999.1.1.1"}}, "node.bind"),
])
def test_refused_naming_the_key(raw, key):
    with pytest.raises(ConfigError) as err:
        settings_from_mapping(raw)
    assert str(err.value).startswith(key)


def test_sane_values_pass():
    s = settings_from_mapping({"node": {"ae_title": "LIVERNODE", "bind": "::"}, "metrics": {"bind": "localhost"},
                               "results": {"return_to": {"CT1": "PACS@[::1]:104"}}})
    assert s.node.bind == "::" and s.results.return_to == {"CT1": "PACS@[::1]:104"}
