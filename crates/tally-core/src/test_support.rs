//! Fixtures for tests across the workspace (feature `test-support`).

use std::path::Path;

use crate::enrich::{write_city_database, CityNetwork};

/// Writes a MaxMind-format City database covering 81.2.69.0/24 (Paris, France), the GeoIP
/// fixture of the tests.
///
/// # Panics
/// When the file cannot be written: this is test code.
#[allow(clippy::expect_used)]
pub fn write_geoip_database(path: &Path) {
    write_city_database(
        path,
        &[CityNetwork {
            network: "81.2.69.0/24",
            city: "Paris",
            country_code: "FR",
            country: "France",
            latitude: 48.8566,
            longitude: 2.3522,
        }],
    )
    .expect("write the GeoIP fixture");
}
