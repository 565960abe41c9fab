//! Fixtures for tests across the workspace (feature `test-support`).

use std::collections::BTreeMap;
use std::path::Path;

#[derive(serde::Serialize)]
struct Names {
    names: BTreeMap<String, String>,
}

#[derive(serde::Serialize)]
struct Country {
    iso_code: String,
    names: BTreeMap<String, String>,
}

#[derive(serde::Serialize)]
struct Location {
    latitude: f64,
    longitude: f64,
}

#[derive(serde::Serialize)]
struct City {
    city: Names,
    country: Country,
    location: Location,
}

/// Writes a MaxMind-format City database covering 81.2.69.0/24 (Paris, France), the GeoIP
/// fixture of the tests.
///
/// # Panics
/// When the file cannot be written: this is test code.
#[allow(clippy::expect_used)]
pub fn write_geoip_database(path: &Path) {
    let en = |s: &str| BTreeMap::from([("en".to_owned(), s.to_owned())]);
    let mut w = mmdb_writer::Writer::new("GeoIP2-City");
    let network: ipnet::IpNet = "81.2.69.0/24".parse().expect("valid network");
    w.insert(
        network,
        &City {
            city: Names { names: en("Paris") },
            country: Country {
                iso_code: "FR".into(),
                names: en("France"),
            },
            location: Location {
                latitude: 48.8566,
                longitude: 2.3522,
            },
        },
    )
    .expect("insert network");
    std::fs::write(path, w.to_bytes().expect("serialize database")).expect("write database");
}
