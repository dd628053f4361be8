//! Scenario files: the network and faults an emulator run imposes, and how they change
//! over time. Rates are in MB/s (1e6 bytes/s); 0 means unlimited / off.

use std::path::Path;

use serde::Deserialize;

/// A scenario as written in `bench/scenarios/NAME.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub link: Link,
    #[serde(default)]
    pub faults: Faults,
    #[serde(default)]
    pub throttle: Throttle,
    /// Changes applied at given times after the emulator (re)starts, in order.
    #[serde(default)]
    pub schedule: Vec<Change>,
    /// Workload sizes for the bench; the emulator ignores them.
    #[serde(default)]
    pub bench: Option<toml::Table>,
}

/// Delay and bandwidth.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// Round-trip time added to every request/response, and to every new connection.
    #[serde(default)]
    pub rtt_ms: f64,
    /// Uniform random extra delay in [0, jitter_ms] per request.
    #[serde(default)]
    pub jitter_ms: f64,
    /// Shared bottleneck, client to server.
    #[serde(default)]
    pub bottleneck_up_mbps: f64,
    /// Shared bottleneck, server to client.
    #[serde(default)]
    pub bottleneck_down_mbps: f64,
    /// Cap of one connection, each direction (what one long, lossy TCP stream gets).
    #[serde(default)]
    pub per_connection_mbps: f64,
}

/// Injected faults, each a fraction of requests.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Connection reset in the middle of the request or response body.
    #[serde(default)]
    pub reset_rate: f64,
    /// A pause of `stall_secs` in the middle of a body.
    #[serde(default)]
    pub stall_rate: f64,
    #[serde(default = "default_stall_secs")]
    pub stall_secs: f64,
    /// Answered `500 InternalError` without reaching the server.
    #[serde(default)]
    pub error_rate: f64,
    /// One byte of the body flipped in flight (request bodies: the server's checksum
    /// check must catch it).
    #[serde(default)]
    pub corrupt_rate: f64,
    /// Also corrupt the first N request bodies after (re)start, deterministically (tests).
    #[serde(default)]
    pub corrupt_first: u64,
    /// Also reset the first N requests after (re)start, deterministically (tests).
    #[serde(default)]
    pub reset_first: u64,
    /// Also stall (for `stall_secs`) the first N requests after (re)start that are not
    /// reset, deterministically (tests).
    #[serde(default)]
    pub stall_first: u64,
    /// Also stall the requests with these numbers (0 = the first after (re)start) that are
    /// not reset: a rare random stall, placed so that every run meets it (bench).
    #[serde(default)]
    pub stall_at: Vec<u64>,
    /// Key prefixes (`bucket/key-prefix`, matched against the start of `bucket/key`) whose
    /// object requests all fail outright with `fail_status`: a prefix that is down.
    #[serde(default)]
    pub fail_prefixes: Vec<String>,
    /// Status for `fail_prefixes`: 500 (InternalError) or 503 (ServiceUnavailable). Default 500.
    #[serde(default = "default_fail_status")]
    pub fail_status: u16,
}

fn default_fail_status() -> u16 {
    500
}

fn default_stall_secs() -> f64 {
    5.0
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            reset_rate: 0.0,
            stall_rate: 0.0,
            stall_secs: default_stall_secs(),
            error_rate: 0.0,
            corrupt_rate: 0.0,
            corrupt_first: 0,
            reset_first: 0,
            stall_first: 0,
            stall_at: Vec::new(),
            fail_prefixes: Vec::new(),
            fail_status: default_fail_status(),
        }
    }
}

/// Per-prefix request-rate limits, answered with `503 SlowDown` above the limit.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Throttle {
    #[serde(default)]
    pub requests_per_sec_per_prefix: f64,
    /// The prefix of a key is the bucket plus the key up to its Nth `/`.
    #[serde(default = "one")]
    pub prefix_depth: usize,
}

fn one() -> usize {
    1
}

impl Default for Throttle {
    fn default() -> Self {
        Self { requests_per_sec_per_prefix: 0.0, prefix_depth: 1 }
    }
}

/// A change at `at_secs`: any knob of [`Link`], [`Faults`] or [`Throttle`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub at_secs: f64,
    pub rtt_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
    pub bottleneck_up_mbps: Option<f64>,
    pub bottleneck_down_mbps: Option<f64>,
    pub per_connection_mbps: Option<f64>,
    pub reset_rate: Option<f64>,
    pub stall_rate: Option<f64>,
    pub stall_secs: Option<f64>,
    pub error_rate: Option<f64>,
    pub corrupt_rate: Option<f64>,
    pub requests_per_sec_per_prefix: Option<f64>,
}

/// The knobs in force at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    pub link: Link,
    pub faults: Faults,
    pub throttle: Throttle,
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read scenario {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("invalid scenario {}: {e}", path.display()))
    }

    /// Parses and checks scenario text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let s: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        let p = s.params_at(0.0);
        let rates = [p.faults.reset_rate, p.faults.stall_rate, p.faults.error_rate, p.faults.corrupt_rate];
        if rates.iter().any(|r| !(0.0..=1.0).contains(r)) {
            return Err("fault rates are fractions between 0 and 1".into());
        }
        if !matches!(p.faults.fail_status, 500 | 503) {
            return Err("fail_status must be 500 or 503".into());
        }
        if s.schedule.windows(2).any(|w| w[0].at_secs > w[1].at_secs) {
            return Err("schedule entries must be in time order".into());
        }
        Ok(s)
    }

    /// The knobs in force `t` seconds after start: the base values with every scheduled
    /// change up to `t` applied in order.
    pub fn params_at(&self, t: f64) -> Params {
        let mut p = Params { link: self.link.clone(), faults: self.faults.clone(), throttle: self.throttle.clone() };
        for c in self.schedule.iter().filter(|c| c.at_secs <= t) {
            let set = |slot: &mut f64, v: Option<f64>| {
                if let Some(v) = v {
                    *slot = v;
                }
            };
            set(&mut p.link.rtt_ms, c.rtt_ms);
            set(&mut p.link.jitter_ms, c.jitter_ms);
            set(&mut p.link.bottleneck_up_mbps, c.bottleneck_up_mbps);
            set(&mut p.link.bottleneck_down_mbps, c.bottleneck_down_mbps);
            set(&mut p.link.per_connection_mbps, c.per_connection_mbps);
            set(&mut p.faults.reset_rate, c.reset_rate);
            set(&mut p.faults.stall_rate, c.stall_rate);
            set(&mut p.faults.stall_secs, c.stall_secs);
            set(&mut p.faults.error_rate, c.error_rate);
            set(&mut p.faults.corrupt_rate, c.corrupt_rate);
            set(&mut p.throttle.requests_per_sec_per_prefix, c.requests_per_sec_per_prefix);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIFTING: &str = r#"
name = "shifting"
[link]
rtt_ms = 60.0
bottleneck_up_mbps = 40.0
per_connection_mbps = 2.0
[[schedule]]
at_secs = 20.0
bottleneck_up_mbps = 10.0
[[schedule]]
at_secs = 40.0
bottleneck_up_mbps = 40.0
[bench]
large_object_mib = 1024
"#;

    #[test]
    fn schedule_changes_only_the_named_knobs_at_their_times() {
        let s = Scenario::parse(SHIFTING).unwrap();
        assert_eq!(s.params_at(0.0).link.bottleneck_up_mbps, 40.0);
        assert_eq!(s.params_at(20.0).link.bottleneck_up_mbps, 10.0);
        assert_eq!(s.params_at(39.9).link.bottleneck_up_mbps, 10.0);
        assert_eq!(s.params_at(45.0).link.bottleneck_up_mbps, 40.0);
        assert_eq!(s.params_at(30.0).link.rtt_ms, 60.0);
        assert_eq!(s.params_at(30.0).link.per_connection_mbps, 2.0);
    }

    #[test]
    fn bad_scenarios_are_rejected_with_a_reason() {
        assert!(Scenario::parse("name = 'x'\n[link]\nrtt = 5").unwrap_err().contains("unknown field"));
        assert!(Scenario::parse("name = 'x'\n[faults]\nreset_rate = 2.0").unwrap_err().contains("fractions"));
        let unordered = "name='x'\n[[schedule]]\nat_secs=5.0\n[[schedule]]\nat_secs=1.0";
        assert!(Scenario::parse(unordered).unwrap_err().contains("time order"));
    }

    #[test]
    fn committed_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/scenarios");
        let mut names = Vec::new();
        for e in std::fs::read_dir(&dir).expect("bench/scenarios exists").flatten() {
            if e.path().extension().is_some_and(|x| x == "toml") {
                names.push(Scenario::load(&e.path()).unwrap().name);
            }
        }
        for required in ["lan", "wan", "lossy", "throttled", "shifting", "prefix-failure"] {
            assert!(names.iter().any(|n| n == required), "scenario {required} missing from {names:?}");
        }
    }
}
