"""Static intensity from codecarbon's data, and carbon/cost per interval."""

import pytest

from carbonwatch.errors import UnknownZone
from carbonwatch.grid.static import cloud_region_intensity, country_intensity, resolve_static
from carbonwatch.pricing import Pricing, co2e_g


def test_country_codes_alpha2_and_alpha3_agree():
    assert country_intensity("FR") == country_intensity("FRA")
    point = country_intensity("FRA")
    assert point.kind == "static" and point.provider.startswith("codecarbon-static")
    assert 0 < point.intensity_g_per_kwh < 200  # France's grid is mostly nuclear


@pytest.mark.parametrize("code", ["XX", "ZZZ", "", "1"])
def test_unknown_country_is_a_clear_error(code):
    with pytest.raises(UnknownZone, match="country"):
        country_intensity(code)


def test_cloud_region_and_world_average():
    assert cloud_region_intensity("gcp", "europe-west1").intensity_g_per_kwh > 0
    with pytest.raises(UnknownZone, match="cloud region"):
        cloud_region_intensity("gcp", "mars-north1")
    world = resolve_static()
    assert world.zone == "WORLD" and world.intensity_g_per_kwh == 475.0


def test_one_kwh_at_400_g_with_pue():
    assert co2e_g(3.6e6, 400.0, pue=1.5) == pytest.approx(600.0)
    with pytest.raises(ValueError, match="intensity"):
        co2e_g(1.0, float("nan"))


def test_cost_unknown_without_price_and_device_hours_added():
    assert not Pricing().known
    p = Pricing(price_per_kwh=0.2, pue=1.25, device_hour_rates={"gpu": 2.0})
    assert p.energy_cost(3.6e6) == pytest.approx(0.25)
    assert p.device_hours_cost({"gpu": 1.5, "cpu": 1.0}) == pytest.approx(3.0)
