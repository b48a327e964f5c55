//! Operators: the per-device chain. Each operator's spec is declared in its own folder under
//! `operators/`, beside its checks, its compile step and its state machine; the registry there
//! generates [`OperatorSpec`], the list the pipeline file holds.

pub use crate::operators::settings::{Aggregate, BaselineEmit, BaselineMethod, Correction, Direction, SmoothMethod};
pub use crate::operators::{
    AggregatesSpec, BaselineSpec, CalibrateSpec, FlatlineSpec, HealthSpec, HysteresisSpec, OperatorSpec, SmoothSpec,
    ThresholdSpec, WindowSpec,
};

#[cfg(test)]
mod tests {
    use super::*;

    fn op(json: serde_json::Value) -> OperatorSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_derived_field_rule() {
        use serde_json::json;
        let cases = [
            (
                json!({ "baseline": { "field": "co2" } }),
                Some("baseline"),
                Some("name"),
            ),
            (
                json!({ "baseline": { "name": "co2_base", "field": "co2" } }),
                Some("co2_base"),
                Some("name"),
            ),
            (
                json!({ "smooth": { "field": "pm25" } }),
                Some("pm25_smooth"),
                Some("output"),
            ),
            (
                json!({ "smooth": { "field": "pm25", "output": "pm" } }),
                Some("pm"),
                Some("output"),
            ),
            (json!({ "threshold": { "field": "pm25", "above": 5 } }), None, None),
        ];
        for (spec, field, key) in cases {
            let spec = op(spec);
            assert_eq!(spec.derived_field().as_deref(), field, "{spec:?}");
            assert_eq!(spec.derived_field_key(), key, "{spec:?}");
        }
    }

    #[test]
    fn threshold_limits() {
        use serde_json::json;
        let limits = |t: serde_json::Value| match op(json!({ "threshold": t })) {
            OperatorSpec::Threshold(t) => t.limits(),
            other => panic!("{other:?}"),
        };
        assert_eq!(limits(json!({ "field": "a", "above": 5 })), Ok((Some(5.0), None)));
        assert_eq!(limits(json!({ "field": "a", "below": 5 })), Ok((None, Some(5.0))));
        assert_eq!(
            limits(json!({ "field": "a", "relative_to": "b" })),
            Ok((Some(0.0), None))
        );
        assert!(limits(json!({ "field": "a" })).is_err());
        assert!(limits(json!({ "field": "a", "above": 5, "below": 1 })).is_err());
    }
}
