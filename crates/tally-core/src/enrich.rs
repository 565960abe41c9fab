//! Ingest-time enrichment: browser, OS and device type from the user agent (woothee), geo
//! location from the IP through an optional MaxMind-format database, and a device
//! fingerprint hash.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use hashlink::LruCache;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::event::ValidEvent;

/// One network of a GeoIP database written by [`write_city_database`].
#[derive(Debug, Clone)]
pub struct CityNetwork<'a> {
    /// CIDR, e.g. `81.2.69.0/24`.
    pub network: &'a str,
    pub city: &'a str,
    pub country_code: &'a str,
    pub country: &'a str,
    pub latitude: f64,
    pub longitude: f64,
}

#[derive(serde::Serialize)]
struct WriteNames {
    names: BTreeMap<String, String>,
}

#[derive(serde::Serialize)]
struct WriteCountry {
    iso_code: String,
    names: BTreeMap<String, String>,
}

#[derive(serde::Serialize)]
struct WriteLocation {
    latitude: f64,
    longitude: f64,
}

#[derive(serde::Serialize)]
struct WriteCity {
    city: WriteNames,
    country: WriteCountry,
    location: WriteLocation,
}

#[derive(Debug, thiserror::Error)]
pub enum GeoIpWriteError {
    #[error("invalid network {0}")]
    Network(String),
    #[error("failed to build the database: {0}")]
    Build(String),
    #[error("failed to write the database: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes a MaxMind-format City database (the layout `Enricher::with_geoip` reads) mapping
/// each network to its city: the demo's map and the tests' fixture.
pub fn write_city_database(
    path: &Path,
    networks: &[CityNetwork<'_>],
) -> Result<(), GeoIpWriteError> {
    let en = |s: &str| BTreeMap::from([("en".to_owned(), s.to_owned())]);
    let mut writer = mmdb_writer::Writer::new("GeoIP2-City");
    for n in networks {
        let network: ipnet::IpNet = n
            .network
            .parse()
            .map_err(|_| GeoIpWriteError::Network(n.network.to_owned()))?;
        writer
            .insert(
                network,
                &WriteCity {
                    city: WriteNames { names: en(n.city) },
                    country: WriteCountry {
                        iso_code: n.country_code.to_owned(),
                        names: en(n.country),
                    },
                    location: WriteLocation {
                        latitude: n.latitude,
                        longitude: n.longitude,
                    },
                },
            )
            .map_err(|e| GeoIpWriteError::Build(format!("{e:?}")))?;
    }
    let bytes = writer
        .to_bytes()
        .map_err(|e| GeoIpWriteError::Build(format!("{e:?}")))?;
    std::fs::write(path, bytes)?;
    Ok(())
}

/// Geo location resolved from an IP address.
#[derive(Debug, Clone, PartialEq)]
pub struct GeoLocation {
    pub country: Option<String>,
    pub country_code: Option<String>,
    pub city: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
}

#[derive(Deserialize)]
struct MmdbCity {
    city: Option<MmdbNames>,
    country: Option<MmdbCountry>,
    location: Option<MmdbLocation>,
}

#[derive(Deserialize)]
struct MmdbNames {
    names: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct MmdbCountry {
    iso_code: Option<String>,
    names: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct MmdbLocation {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

fn english(names: Option<BTreeMap<String, String>>) -> Option<String> {
    names.and_then(|mut n| n.remove("en"))
}

#[derive(Debug, thiserror::Error)]
#[error("failed to open GeoIP database: {0}")]
pub struct GeoIpError(String);

/// User agents remembered with what they parse to. Traffic repeats a few thousand user
/// agents, and parsing one (woothee's regexes) costs microseconds per event.
const UA_CACHE_ENTRIES: usize = 4096;
/// Longer user agents are parsed every time: they are rare, and would make the cache large.
const UA_CACHE_MAX_LEN: usize = 512;

/// What a user agent tells: the `context` fields it adds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UaFields {
    device_type: &'static str,
    browser: Option<String>,
    os: Option<String>,
}

/// Derives `context` and `enriched_data` fields from what the client sent.
pub struct Enricher {
    ua: woothee::parser::Parser,
    ua_cache: Mutex<LruCache<Box<str>, Option<UaFields>>>,
    geo: Option<maxminddb::Reader<Vec<u8>>>,
}

impl std::fmt::Debug for Enricher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enricher")
            .field("geoip", &self.geo.is_some())
            .finish()
    }
}

impl Default for Enricher {
    fn default() -> Self {
        Self::new()
    }
}

impl Enricher {
    /// An enricher without a GeoIP database: geo location is skipped.
    pub fn new() -> Self {
        Self {
            ua: woothee::parser::Parser::new(),
            ua_cache: Mutex::new(LruCache::new(UA_CACHE_ENTRIES)),
            geo: None,
        }
    }

    /// Loads a MaxMind-format (GeoIP2/GeoLite2 City) database.
    pub fn with_geoip(path: &Path) -> Result<Self, GeoIpError> {
        let reader = maxminddb::Reader::open_readfile(path)
            .map_err(|e| GeoIpError(format!("{}: {e}", path.display())))?;
        Ok(Self {
            geo: Some(reader),
            ..Self::new()
        })
    }

    pub fn has_geoip(&self) -> bool {
        self.geo.is_some()
    }

    pub fn geolocate(&self, ip: IpAddr) -> Option<GeoLocation> {
        let reader = self.geo.as_ref()?;
        let rec: MmdbCity = reader.lookup(ip).ok().flatten()?;
        let (country, country_code) = match rec.country {
            Some(c) => (english(c.names), c.iso_code),
            None => (None, None),
        };
        let (latitude, longitude) = rec
            .location
            .map_or((None, None), |l| (l.latitude, l.longitude));
        Some(GeoLocation {
            country,
            country_code,
            city: rec.city.and_then(|c| english(c.names)),
            latitude,
            longitude,
        })
    }

    /// Adds `browser`, `os`, `device_type` (and the fallback `ip_address`) to the event's
    /// context and returns the `enriched_data` object (geo location, device fingerprint).
    pub fn enrich(
        &self,
        tenant_salt: &[u8],
        event: &mut ValidEvent,
        peer_ip: Option<IpAddr>,
    ) -> Map<String, Value> {
        let ctx = &mut event.context;
        if !ctx.contains_key("session_id") {
            if let Some(sid) = event.properties.get("session_id").filter(|v| v.is_string()) {
                ctx.insert("session_id".into(), sid.clone());
            }
        }
        let ip: Option<IpAddr> = match ctx.get("ip_address").and_then(Value::as_str) {
            Some(s) => s.parse().ok(),
            None => {
                if let Some(p) = peer_ip {
                    ctx.insert("ip_address".into(), Value::String(p.to_string()));
                }
                peer_ip
            }
        };
        let ua = ctx
            .get("user_agent")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(fields) = ua.as_deref().and_then(|ua| self.user_agent(ua)) {
            ctx.entry("device_type")
                .or_insert_with(|| Value::String(fields.device_type.to_owned()));
            if let Some(browser) = fields.browser {
                ctx.entry("browser").or_insert(Value::String(browser));
            }
            if let Some(os) = fields.os {
                ctx.entry("os").or_insert(Value::String(os));
            }
        }

        let mut enriched = Map::new();
        if let Some(geo) = ip.and_then(|ip| self.geolocate(ip)) {
            enriched.insert(
                "geo_location".into(),
                json!({
                    "country": geo.country,
                    "country_code": geo.country_code,
                    "city": geo.city,
                    "latitude": geo.latitude,
                    "longitude": geo.longitude,
                }),
            );
        }
        if ua.is_some() || ip.is_some() {
            enriched.insert(
                "device_fingerprint".into(),
                Value::String(fingerprint(tenant_salt, ua.as_deref(), ip, &event.context)),
            );
        }
        enriched
    }
}

impl Enricher {
    /// The fields `ua` parses to, remembered for the next event with the same user agent.
    fn user_agent(&self, ua: &str) -> Option<UaFields> {
        if ua.len() > UA_CACHE_MAX_LEN {
            return self.parse_user_agent(ua);
        }
        // A poisoned lock only means another thread panicked mid-insert: the cache is
        // still a map of parsed answers.
        let mut cache = self.ua_cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(hit) = cache.get(ua) {
            return hit.clone();
        }
        drop(cache);
        let fields = self.parse_user_agent(ua);
        let mut cache = self.ua_cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.insert(ua.into(), fields.clone());
        fields
    }

    fn parse_user_agent(&self, ua: &str) -> Option<UaFields> {
        let parsed = self.ua.parse(ua)?;
        let known = |s: &str| s != woothee::woothee::VALUE_UNKNOWN;
        Some(UaFields {
            device_type: device_type(parsed.category, parsed.os),
            browser: known(parsed.name).then(|| parsed.name.to_owned()),
            os: known(parsed.os).then(|| os_family(parsed.os).to_owned()),
        })
    }
}

fn device_type(category: &str, os: &str) -> &'static str {
    match category {
        "pc" => "desktop",
        "smartphone" if os == "iPad" || os.contains("Tablet") => "tablet",
        "smartphone" | "mobilephone" => "mobile",
        "crawler" => "bot",
        "appliance" => "appliance",
        _ => "other",
    }
}

/// woothee names Windows versions ("Windows 10"); the seed shows the family ("Windows").
fn os_family(os: &str) -> &str {
    if os.starts_with("Windows") {
        "Windows"
    } else {
        os
    }
}

/// A stable, non-reversible device identifier: SHA-256 over the tenant salt, user agent,
/// IP /24 (or /48) network and accept-language, formatted like a UUID with an `fp-` prefix.
fn fingerprint(
    salt: &[u8],
    ua: Option<&str>,
    ip: Option<IpAddr>,
    ctx: &Map<String, Value>,
) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update([0]);
    h.update(ua.unwrap_or_default().as_bytes());
    h.update([0]);
    match ip {
        Some(IpAddr::V4(v4)) => h.update(&v4.octets()[..3]),
        Some(IpAddr::V6(v6)) => h.update(&v6.octets()[..6]),
        None => {}
    }
    h.update([0]);
    if let Some(lang) = ctx.get("accept_language").and_then(Value::as_str) {
        h.update(lang.as_bytes());
    }
    let d = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&d[..16]);
    format!("fp-{}", uuid::Uuid::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{validate, EventInput, EventLimits};

    const CHROME_WIN: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";

    fn event(ctx: Value) -> ValidEvent {
        let input: EventInput = serde_json::from_value(json!({
            "event_type": "user_action", "event_name": "x", "context": ctx,
            "properties": {"session_id": "s-1"}
        }))
        .unwrap();
        validate(input, &EventLimits::default(), 1_705_761_000_000_000).unwrap()
    }

    #[test]
    fn user_agent_gives_browser_os_device() {
        let enricher = Enricher::new();
        let mut e = event(json!({"user_agent": CHROME_WIN}));
        let enriched = enricher.enrich(b"t", &mut e, None);
        assert_eq!(e.context["browser"], "Chrome");
        assert_eq!(e.context["os"], "Windows");
        assert_eq!(e.context["device_type"], "desktop");
        assert_eq!(e.context["session_id"], "s-1");
        let fp = enriched["device_fingerprint"].as_str().unwrap();
        assert!(fp.starts_with("fp-") && fp.len() == 39);

        let mut m = event(json!({"user_agent": IPHONE}));
        enricher.enrich(b"t", &mut m, None);
        assert_eq!(m.context["device_type"], "mobile");
        assert_eq!(m.context["os"], "iPhone");
    }

    #[test]
    fn remembered_user_agents_give_what_parsing_gives() {
        let enricher = Enricher::new();
        let long = format!("{CHROME_WIN} {}", "x".repeat(UA_CACHE_MAX_LEN));
        for ua in [
            CHROME_WIN,
            IPHONE,
            "curl/8.5.0",
            "not a browser at all",
            long.as_str(),
        ] {
            let parsed = enricher.parse_user_agent(ua);
            // The first call parses and remembers, the second is answered from memory.
            assert_eq!(enricher.user_agent(ua), parsed, "{ua}");
            assert_eq!(enricher.user_agent(ua), parsed, "{ua}");
        }
        let cache = enricher.ua_cache.lock().unwrap();
        assert_eq!(cache.len(), 4, "the over-long user agent is not kept");
        drop(cache);
        // Past its capacity the cache forgets the least recently used, and answers stay right.
        for i in 0..UA_CACHE_ENTRIES + 10 {
            enricher.user_agent(&format!("{IPHONE} build/{i}"));
        }
        assert_eq!(enricher.ua_cache.lock().unwrap().len(), UA_CACHE_ENTRIES);
        let mut e = event(json!({"user_agent": CHROME_WIN}));
        enricher.enrich(b"t", &mut e, None);
        assert_eq!(e.context["browser"], "Chrome");
        assert_eq!(e.context["os"], "Windows");
        assert_eq!(e.context["device_type"], "desktop");
    }

    #[test]
    fn fingerprint_is_stable_and_tenant_salted() {
        let enricher = Enricher::new();
        let ctx = json!({"user_agent": CHROME_WIN, "ip_address": "10.1.2.3"});
        let a = enricher.enrich(b"t1", &mut event(ctx.clone()), None);
        let b = enricher.enrich(b"t1", &mut event(ctx.clone()), None);
        let c = enricher.enrich(b"t2", &mut event(ctx), None);
        assert_eq!(a["device_fingerprint"], b["device_fingerprint"]);
        assert_ne!(a["device_fingerprint"], c["device_fingerprint"]);
    }

    #[test]
    fn geoip_database_resolves_city_and_absent_database_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("city.mmdb");
        crate::test_support::write_geoip_database(&path);
        let enricher = Enricher::with_geoip(&path).unwrap();
        let mut e = event(json!({"ip_address": "81.2.69.160"}));
        let enriched = enricher.enrich(b"t", &mut e, None);
        assert_eq!(
            enriched["geo_location"],
            json!({"country": "France", "country_code": "FR", "city": "Paris", "latitude": 48.8566, "longitude": 2.3522})
        );
        // unknown network: no geo, still a fingerprint
        let enriched = enricher.enrich(b"t", &mut event(json!({"ip_address": "192.0.2.1"})), None);
        assert!(!enriched.contains_key("geo_location"));
        assert!(enriched.contains_key("device_fingerprint"));

        let plain =
            Enricher::new().enrich(b"t", &mut event(json!({"ip_address": "81.2.69.160"})), None);
        assert!(!plain.contains_key("geo_location"));
        assert!(Enricher::with_geoip(&dir.path().join("missing.mmdb")).is_err());
    }

    #[test]
    fn peer_ip_is_used_when_context_has_none() {
        let mut e = event(json!({}));
        Enricher::new().enrich(b"t", &mut e, Some("203.0.113.9".parse().unwrap()));
        assert_eq!(e.context["ip_address"], "203.0.113.9");
    }
}
