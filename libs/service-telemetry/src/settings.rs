//! [`TelemetrySettings`]: the service's name in traces and where its spans go, from the
//! OpenTelemetry variables. Exporting is off unless an endpoint is set.
//!
//! | variable | meaning |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | base URL of an OTLP/HTTP collector, e.g. `http://127.0.0.1:4318`; spans go to `<base>/v1/traces` |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | the full traces URL instead (wins over the base) |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` | `http/protobuf`, the only one built in |
//! | `OTEL_SERVICE_NAME` | `service.name` of the spans, default the binary's name |
//! | `OTEL_SDK_DISABLED` | `true` turns exporting off |
//!
//! Endpoints are plain `http://`: the build has no TLS (a collector or agent next to
//! the service, as is usual). The SDK reads its own tuning variables as the
//! specification says (`OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER`).

use service_config::{ConfigError, Vars};

/// The OTLP protocol this build speaks.
pub const OTLP_PROTOCOL: &str = "http/protobuf";

/// How both services report traces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetrySettings {
    /// `OTEL_SERVICE_NAME`, default the binary's name.
    pub service_name: String,
    /// Where spans are exported; `None`: nowhere (ids in logs and outbox rows only).
    pub otlp: Option<OtlpSettings>,
}

/// An OTLP/HTTP collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// The URL spans are posted to, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub traces_endpoint: String,
}

impl TelemetrySettings {
    /// Logs and trace ids without exporting, as `service_name`.
    pub fn logs_only(service_name: &str) -> Self {
        Self {
            service_name: service_name.to_string(),
            otlp: None,
        }
    }

    /// Reads the variables in the table above; `default_name` is the service name when
    /// `OTEL_SERVICE_NAME` is unset.
    pub fn from_vars<L: Fn(&str) -> Option<String>>(
        vars: &Vars<L>,
        default_name: &str,
    ) -> Result<Self, ConfigError> {
        for variable in [
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ] {
            if vars.get(variable).is_some_and(|p| p != OTLP_PROTOCOL) {
                return Err(ConfigError::Invalid {
                    variable,
                    reason: "only http/protobuf is built in",
                });
            }
        }
        let disabled = match vars
            .get("OTEL_SDK_DISABLED")
            .map(|v| v.to_ascii_lowercase())
        {
            None => false,
            Some(v) if v == "false" => false,
            Some(v) if v == "true" => true,
            Some(_) => {
                return Err(ConfigError::Invalid {
                    variable: "OTEL_SDK_DISABLED",
                    reason: "expected true or false",
                })
            }
        };
        let traces_endpoint = match (
            vars.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            vars.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(url), _) => Some(checked_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)?),
            (None, Some(base)) => {
                let base = checked_url("OTEL_EXPORTER_OTLP_ENDPOINT", base)?;
                Some(format!("{}/v1/traces", base.trim_end_matches('/')))
            }
            (None, None) => None,
        };
        Ok(Self {
            service_name: vars.or("OTEL_SERVICE_NAME", default_name),
            otlp: traces_endpoint
                .filter(|_| !disabled)
                .map(|traces_endpoint| OtlpSettings { traces_endpoint }),
        })
    }

    /// Reads the process environment ([`TelemetrySettings::from_vars`]).
    pub fn from_env(default_name: &str) -> Result<Self, ConfigError> {
        Self::from_vars(&Vars::env(), default_name)
    }
}

/// `value` if it is an `http://host[:port][/path]` URL.
fn checked_url(variable: &'static str, value: String) -> Result<String, ConfigError> {
    let invalid = |reason| ConfigError::Invalid { variable, reason };
    let uri: http::Uri = value
        .parse()
        .map_err(|_| invalid("expected an http:// URL such as http://127.0.0.1:4318"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(invalid(
                "https is not built in (no TLS): use an http:// collector or agent",
            ))
        }
        _ => {
            return Err(invalid(
                "expected an http:// URL such as http://127.0.0.1:4318",
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) || uri.query().is_some() {
        return Err(invalid(
            "expected an http:// URL such as http://127.0.0.1:4318",
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<TelemetrySettings, ConfigError> {
        TelemetrySettings::from_vars(&Vars::from_pairs(pairs), "some-service")
    }

    #[test]
    fn without_an_endpoint_nothing_is_exported_and_the_binary_names_the_service() {
        assert_eq!(
            settings(&[]).unwrap(),
            TelemetrySettings::logs_only("some-service")
        );
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]).unwrap();
        assert_eq!(s.otlp, None, "empty counts as unset");
    }

    #[test]
    fn the_base_endpoint_gets_the_traces_path_and_the_traces_endpoint_is_used_as_given() {
        for (base, expected) in [
            ("http://collector:4318", "http://collector:4318/v1/traces"),
            ("http://collector:4318/", "http://collector:4318/v1/traces"),
            (
                "http://10.0.0.1:4318/otlp/",
                "http://10.0.0.1:4318/otlp/v1/traces",
            ),
        ] {
            let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", base)]).unwrap();
            assert_eq!(s.otlp.unwrap().traces_endpoint, expected);
        }
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:9999/in",
            ),
            ("OTEL_SERVICE_NAME", "payments"),
        ])
        .unwrap();
        assert_eq!(s.otlp.unwrap().traces_endpoint, "http://traces:9999/in");
        assert_eq!(s.service_name, "payments");
    }

    #[test]
    fn a_bad_endpoint_or_protocol_is_named_without_its_value() {
        for (variable, value) in [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector:4318"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://collector:4318/?token=s3cret",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ("OTEL_SDK_DISABLED", "yes"),
        ] {
            let err = settings(&[(variable, value)]).unwrap_err();
            assert_eq!(err.variable(), variable, "{value}");
            assert!(!err.to_string().contains(value), "{err}");
        }
        let ok = settings(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]);
        assert!(ok.is_ok());
    }

    #[test]
    fn the_sdk_can_be_disabled_with_an_endpoint_set() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ])
        .unwrap();
        assert_eq!(s.otlp, None);
    }
}
