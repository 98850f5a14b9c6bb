"""DIA sources: dipoles kept and flagged (or dropped with a subtracted star), second moments, the Arrow round trip."""

from __future__ import annotations

import numpy as np
import pytest

from prompt_processing.imaging.catalogue import psf_flux, second_moments
from prompt_processing.imaging.dia import DiaCatalogue, detect_dia_sources

SIZE = 128


def _gaussian(x0: float, y0: float, sigma_x: float, sigma_y: float | None = None, rho: float = 0.0) -> np.ndarray:
    """A unit-peak elliptical Gaussian on the test grid."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float64)
    dx, dy = (xx - x0) / sigma_x, (yy - y0) / sigma_y
    return np.exp(-(dx**2 - 2 * rho * dx * dy + dy**2) / (2 * (1 - rho**2)))


def _noise(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((SIZE, SIZE))


def test_a_dipole_is_one_flagged_source_at_the_lobes_midpoint_with_their_fluxes() -> None:
    positive, negative = 40 * _gaussian(64.0, 64.0, 1.5), 30 * _gaussian(69.0, 64.0, 1.5)  # 5 px < 2 FWHM apart
    lone = 40 * _gaussian(30.0, 100.0, 1.5)
    image = (_noise(1) + positive - negative + lone).astype(np.float32)
    found = detect_dia_sources(image, 1.0, threshold_sigma=5.0, kernel_fwhm_px=3.5)
    assert len(found) == 2
    single, dipole = np.flatnonzero(~found.measurements.is_dipole), np.flatnonzero(found.measurements.is_dipole)
    assert len(single) == len(dipole) == 1
    assert found.sources.x_px[single[0]] == pytest.approx(30.0, abs=0.3)
    assert found.sources.x_px[dipole[0]] == pytest.approx(66.5, abs=0.5)
    m = found.measurements
    # Detection centroids: each lobe's matched filter sees the other's opposite light, pushing them apart.
    assert m.positive_x_px[dipole[0]] == pytest.approx(64.0, abs=1.0)
    assert m.negative_x_px[dipole[0]] == pytest.approx(69.0, abs=1.0)
    lobe_flux = 2 * np.pi * 1.5**2  # per unit peak
    # The lobes overlap, so each aperture holds some of the other: the fluxes are the lobes' within 20%.
    assert m.dipole_mean_flux_e[dipole[0]] == pytest.approx(35 * lobe_flux, rel=0.2)
    assert m.dipole_flux_diff_e[dipole[0]] > 0  # the positive lobe is the brighter
    assert m.shape_flag[dipole[0]] and np.isnan(m.ixx_px2[dipole[0]])
    assert np.isnan(m.dipole_mean_flux_e[single[0]])


def test_a_dipole_on_a_subtracted_star_is_a_residual_and_dropped() -> None:
    image = (_noise(2) + 40 * _gaussian(64.0, 64.0, 1.5) - 40 * _gaussian(66.0, 64.0, 1.5)).astype(np.float32)
    star_light = (1e5 * _gaussian(65.0, 64.0, 1.5)).astype(np.float32)
    assert len(detect_dia_sources(image, 1.0, threshold_sigma=5.0, kernel_fwhm_px=3.5)) == 1
    assert len(detect_dia_sources(image, 1.0, threshold_sigma=5.0, kernel_fwhm_px=3.5, reference=star_light)) == 0


@pytest.mark.parametrize(("sigma_x", "sigma_y", "rho"), [(1.5, 1.5, 0.0), (2.5, 1.2, 0.0), (2.0, 1.6, 0.5)])
def test_second_moments_recover_an_elliptical_gaussian(sigma_x: float, sigma_y: float, rho: float) -> None:
    image = 1000 * _gaussian(60.3, 70.7, sigma_x, sigma_y, rho)
    ixx, iyy, ixy, flag = second_moments(image, np.array([60.3]), np.array([70.7]), np.array([1.0]), sigma_px=1.5)
    assert not flag[0]
    assert ixx[0] == pytest.approx(sigma_x**2, rel=0.02)
    assert iyy[0] == pytest.approx(sigma_y**2, rel=0.02)
    assert ixy[0] == pytest.approx(rho * sigma_x * sigma_y, abs=0.02 * sigma_x * sigma_y)


def test_second_moments_of_a_negative_source_use_its_sign_and_flag_what_cannot_be_measured() -> None:
    image = -500 * _gaussian(50.0, 50.0, 1.8)
    image[10, 10] = np.nan
    x, y = np.array([50.0, 10.0, 1.0, 90.0]), np.array([50.0, 10.0, 60.0, 90.0])
    ixx, _iyy, _ixy, flag = second_moments(image, x, y, np.array([-1.0, 1.0, 1.0, 1.0]), sigma_px=1.5)
    assert not flag[0] and ixx[0] == pytest.approx(1.8**2, rel=0.02)
    assert flag[1:].all()  # on a NaN pixel, off the image's edge, on empty sky (no positive light)
    assert np.isnan(ixx[1:]).all()


def test_the_catalogue_round_trips_through_arrow() -> None:
    image = (_noise(3) + 40 * _gaussian(64.0, 64.0, 1.5) - 30 * _gaussian(67.0, 64.0, 1.5)
             + 40 * _gaussian(30.0, 100.0, 1.5) - 40 * _gaussian(100.0, 20.0, 1.5)).astype(np.float32)  # fmt: skip
    found = detect_dia_sources(image, 1.0, threshold_sigma=5.0, kernel_fwhm_px=3.5)
    assert len(found) == 3 and int(found.measurements.is_dipole.sum()) == 1
    back = DiaCatalogue.from_arrow(found.to_arrow())
    for name in ("x_px", "flux_e", "aperture_flags"):
        np.testing.assert_array_equal(getattr(back.sources, name), getattr(found.sources, name))
    for name in ("ixx_px2", "shape_flag", "is_dipole", "dipole_mean_flux_e", "negative_y_px"):
        np.testing.assert_array_equal(getattr(back.measurements, name), getattr(found.measurements, name))


def test_psf_fluxes_are_unbiased_optimal_and_flagged_off_the_image() -> None:
    rng = np.random.default_rng(5)
    sigma_x, sigma_y, rho, flux = 2.0, 1.4, 0.3, 4000.0
    covariance = (sigma_x**2, sigma_y**2, rho * sigma_x * sigma_y)
    positions = [(30.2, 40.7), (90.5, 60.1), (50.0, 100.3), (100.8, 20.4)]
    source = sum(_gaussian(x, y, sigma_x, sigma_y, rho) for x, y in positions)
    peak_to_flux = 2 * np.pi * sigma_x * sigma_y * np.sqrt(1 - rho**2)
    fluxes, errors = [], []
    for _ in range(20):
        image = (rng.standard_normal((SIZE, SIZE)) * 10.0 + flux / peak_to_flux * source).astype(np.float32)
        x, y = np.array([p[0] for p in positions] + [1.0]), np.array([p[1] for p in positions] + [64.0])
        found, error, flag = psf_flux(image, 10.0, x, y, covariance)
        assert not flag[:4].any() and flag[4] and np.isnan(found[4])  # the last one's stamp leaves the image
        fluxes.append(found[:4])
        errors.append(error[:4])
    # The optimal error of a Gaussian PSF fit: rms * sqrt(4 pi sqrt(det C)).
    expected_error = 10.0 * np.sqrt(4 * np.pi * sigma_x * sigma_y * np.sqrt(1 - rho**2))
    assert np.allclose(errors, expected_error, rtol=0.01)
    assert np.mean(fluxes) == pytest.approx(flux, abs=3 * expected_error / np.sqrt(80))
    assert np.std(fluxes) == pytest.approx(expected_error, rel=0.25)
