//! The operator chain: names, the fields each operator reads and produces, and each operator's
//! own settings.

use std::collections::BTreeMap;

use super::rules::is_name;
use super::{Available, Checker, MAX_FIELDS, Path, RESERVED_ROUTE_NAMES, positive};
use crate::spec::check::PLACEHOLDER_TEXT;
use crate::spec::de::suggest;
use crate::spec::{
    AggregatesSpec, BaselineSpec, CalibrateSpec, Correction, Direction, HealthSpec, HysteresisSpec, OperatorSpec,
    SmoothMethod, SmoothSpec, ThresholdSpec, WindowSpec,
};

/// What is known of an operator of the chain: all of it, unless its part of the file was broken.
pub(super) struct Identity<'p> {
    /// Its kind; `None` when the kind itself was unknown.
    pub kind: Option<&'static str>,
    /// Its name for routes; `None` when unknown.
    pub name: Option<&'p str>,
    /// Whether the name was written (`name:`), not taken from the kind.
    pub explicit: bool,
    /// The field it produces (`Some(None)`: none); `None` when unknown.
    pub produces: Option<Option<String>>,
    /// Whether its part of the file was broken (its own checks are left out).
    pub broken: bool,
}

impl<'p> Checker<'p> {
    /// What is known of operator `i`.
    pub(super) fn identity(&self, i: usize) -> Identity<'p> {
        let spec: &'p OperatorSpec = &self.spec.operators[i];
        let path = Path::root().key("operators").index(i);
        let broken = self.gaps.touches(&path);
        if self.gaps.at(&path) {
            return Identity {
                kind: None,
                name: None,
                explicit: false,
                produces: None,
                broken,
            };
        }
        let readable = |text: &str| !text.contains(PLACEHOLDER_TEXT);
        let produces = spec.derived_field();
        Identity {
            kind: Some(spec.kind()),
            name: Some(spec.name()).filter(|n| readable(n)),
            explicit: spec.explicit_name().is_some(),
            produces: match &produces {
                Some(field) if !readable(field) => None,
                _ => Some(produces),
            },
            broken,
        }
    }

    /// Whether some operator's name or produced field is unknown.
    pub(super) fn chain_uncertain(&self) -> bool {
        (0..self.spec.operators.len()).any(|i| {
            let known = self.identity(i);
            known.name.is_none() || known.produces.is_none()
        })
    }

    pub(super) fn operators(&mut self) {
        let spec = self.spec;
        let mut available = Available {
            fields: BTreeMap::new(),
            uncertain: !self.fields_known(),
        };
        if self.fields_known() {
            for name in spec.decode.fields.keys() {
                available.fields.insert(name.clone(), "decode.fields".to_string());
            }
        }
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, op) in spec.operators.iter().enumerate() {
            let known = self.identity(i);
            let path = Path::root()
                .key("operators")
                .index(i)
                .key(known.kind.unwrap_or("operator"));
            if let Some(name) = known.name {
                let explicit = known.explicit;
                let name_path = if explicit { path.key("name") } else { path.clone() };
                if let Some(first) = names.get(name) {
                    let hint = if explicit { "" } else { "; give each one its own `name`" };
                    self.report(
                        name_path.clone(),
                        format!("operator name `{name}` is already used by operators[{first}]{hint}"),
                    );
                } else {
                    names.insert(name, i);
                }
                if RESERVED_ROUTE_NAMES.contains(&name) {
                    self.report(
                        name_path.clone(),
                        format!("`{name}` is reserved for output routes: give the operator another name"),
                    );
                } else if explicit && !is_name(name) {
                    self.report(
                        name_path,
                        format!("operator name `{name}` may contain only letters, digits, `-` and `_`"),
                    );
                }
            }
            if known.broken {
                match known.produces {
                    Some(Some(field)) => {
                        available.fields.insert(field, format!("operators[{i}]"));
                    }
                    Some(None) => {}
                    None => available.uncertain = true,
                }
                continue;
            }
            self.operator(i, &path, op, &available);
            if let (Some(field), Some(key)) = (op.derived_field(), op.derived_field_key()) {
                if let Some(by) = available.fields.get(&field) {
                    self.report(
                        path.key(key),
                        format!(
                            "this {} produces a field named `{field}`, which {by} already provides; give it \
                             another `{key}`",
                            op.kind()
                        ),
                    );
                } else {
                    available.fields.insert(field, format!("operator `{}`", op.name()));
                }
            }
        }
        let total = available.fields.len();
        if total > MAX_FIELDS {
            self.report(
                Path::root().key("decode").key("fields"),
                format!(
                    "a pipeline can have at most {MAX_FIELDS} fields (declared and produced by operators); this one has {total}"
                ),
            );
        }
    }

    /// Reports a field an operator reads that is not available at its place in the chain.
    fn read_field(&mut self, path: Path, index: usize, operator: &str, field: &str, available: &Available) {
        if available.fields.contains_key(field) || available.uncertain {
            return;
        }
        let later = (index + 1..self.spec.operators.len()).find_map(|j| {
            let known = self.identity(j);
            (known.produces == Some(Some(field.to_string()))).then(|| (j, known.name.unwrap_or_default().to_string()))
        });
        let message = match later {
            Some((j, producer)) => format!(
                "operator `{operator}` reads field `{field}`, which is produced only later, by `{producer}` \
                 (operators[{j}]): move `{producer}` before it"
            ),
            None => {
                let mut m = format!(
                    "operator `{operator}` reads field `{field}`, which is neither declared in decode.fields nor produced \
                     by an earlier operator"
                );
                if let Some(s) = suggest(field, available.fields.keys().map(String::as_str)) {
                    m.push_str(&format!("; did you mean `{s}`?"));
                }
                m
            }
        };
        self.report(path, message);
    }

    fn operator(&mut self, i: usize, path: &Path, spec: &OperatorSpec, available: &Available) {
        let name = spec.name().to_string();
        match spec {
            OperatorSpec::Window(w) => self.window(i, path, &name, w, available),
            OperatorSpec::Hysteresis(h) => self.hysteresis(i, path, &name, h, available),
            OperatorSpec::Baseline(b) => self.baseline(i, path, &name, b, available),
            OperatorSpec::Smooth(s) => self.smooth(i, path, &name, s, available),
            OperatorSpec::Threshold(t) => self.threshold(i, path, &name, t, available),
            OperatorSpec::Calibrate(c) => self.calibrate(i, path, &name, c, available),
            OperatorSpec::Health(h) => self.health(i, path, &name, h, available),
        }
    }

    fn window(&mut self, i: usize, path: &Path, name: &str, w: &WindowSpec, available: &Available) {
        self.duration_positive(path.key("every"), "every", w.every);
        if let Some(slide) = w.slide {
            if !positive(slide) {
                self.report(path.key("slide"), "`slide` must be longer than 0s");
            } else if slide > w.every {
                self.report(
                    path.key("slide"),
                    format!("`slide` ({slide}) must not be longer than `every` ({})", w.every),
                );
            }
        }
        if let Some(idle) = w.idle_flush {
            self.duration_positive(path.key("idle_flush"), "idle_flush", idle);
        }
        match &w.aggregates {
            AggregatesSpec::All(aggregates) => {
                if aggregates.is_empty() {
                    self.report(
                        path.key("aggregates"),
                        "list at least one aggregate (such as `[avg, max]`)",
                    );
                }
                if w.fields.is_empty() {
                    self.report(
                        path.key("aggregates"),
                        "the list form of `aggregates` applies to the fields in `fields`: add `fields: [pm25, …]`, \
                         or use the map form `aggregates: { pm25: [avg, max] }`",
                    );
                }
                for (j, field) in w.fields.iter().enumerate() {
                    self.read_field(path.key("fields").index(j), i, name, field, available);
                }
            }
            AggregatesSpec::PerField(map) => {
                if !w.fields.is_empty() {
                    self.report(
                        path.key("fields"),
                        "`fields` is used only with the list form of `aggregates`; with the map form, its keys are the fields",
                    );
                }
                if map.is_empty() {
                    self.report(
                        path.key("aggregates"),
                        "name at least one field (such as `{ pm25: [avg, max] }`)",
                    );
                }
                for (field, aggregates) in map {
                    self.read_field(path.key("aggregates").key_name(field), i, name, field, available);
                    if aggregates.is_empty() {
                        self.report(
                            path.key("aggregates").key(field),
                            "list at least one aggregate (such as `[avg, max]`)",
                        );
                    }
                }
            }
        }
    }

    fn hysteresis(&mut self, i: usize, path: &Path, name: &str, h: &HysteresisSpec, available: &Available) {
        self.read_field(path.key("field"), i, name, &h.field, available);
        let enter_ok = self.finite(path.key("enter"), "enter", h.enter);
        let exit_ok = self.finite(path.key("exit"), "exit", h.exit);
        if enter_ok && exit_ok {
            match h.direction {
                Direction::Above if h.exit > h.enter => self.report(
                    path.key("exit"),
                    format!(
                        "`exit` ({}) is above `enter` ({}): with direction above, an event opens when the value rises to \
                         `enter` and closes when it falls to `exit`, so `exit` must not be above `enter`",
                        h.exit, h.enter
                    ),
                ),
                Direction::Below if h.exit < h.enter => self.report(
                    path.key("exit"),
                    format!(
                        "`exit` ({}) is below `enter` ({}): with direction below, an event opens when the value falls to \
                         `enter` and closes when it rises to `exit`, so `exit` must not be below `enter`",
                        h.exit, h.enter
                    ),
                ),
                _ => {}
            }
        }
        for (band, value) in &h.severity {
            self.finite(path.key("severity").key(band), band, *value);
        }
        for (key, d) in [("min_duration", h.min_duration), ("min_clear", h.min_clear)] {
            if d.is_some_and(|d| !positive(d)) {
                self.report(
                    path.key(key),
                    format!("`{key}` must be longer than 0s (leave it out for none)"),
                );
            }
        }
    }

    fn baseline(&mut self, i: usize, path: &Path, name: &str, b: &BaselineSpec, available: &Available) {
        self.read_field(path.key("field"), i, name, &b.field, available);
        self.fraction(path.key("alpha"), "alpha", b.alpha);
        if b.days < 1 {
            self.report(path.key("days"), "`days` must be at least 1");
        }
        if !(b.zscore.is_finite() && b.zscore > 0.0) {
            self.report(
                path.key("zscore"),
                format!("`zscore` must be a number above 0, found {}", b.zscore),
            );
        }
        if !(-12..=14).contains(&b.utc_offset_hours) {
            self.report(
                path.key("utc_offset_hours"),
                format!(
                    "`utc_offset_hours` must be from -12 to 14, found {}",
                    b.utc_offset_hours
                ),
            );
        }
    }

    fn smooth(&mut self, i: usize, path: &Path, name: &str, s: &SmoothSpec, available: &Available) {
        self.read_field(path.key("field"), i, name, &s.field, available);
        if s.n < 1 {
            self.report(path.key("n"), "`n` must be at least 1");
        }
        if matches!(s.method, SmoothMethod::Ewma | SmoothMethod::Holt) {
            self.fraction(path.key("alpha"), "alpha", s.alpha);
        }
        if s.method == SmoothMethod::Holt {
            self.fraction(path.key("beta"), "beta", s.beta);
        }
        if let Some(output) = &s.output {
            if !is_name(output) {
                self.report(
                    path.key("output"),
                    format!("field name `{output}` may contain only letters, digits, `-` and `_`"),
                );
            }
        }
    }

    fn threshold(&mut self, i: usize, path: &Path, name: &str, t: &ThresholdSpec, available: &Available) {
        self.read_field(path.key("field"), i, name, &t.field, available);
        match t.limits() {
            Err(e) if t.above.is_some() => self.report(path.key("below"), e),
            Err(e) => self.report(path.clone(), e),
            Ok(_) => {
                for (key, limit) in [("above", t.above), ("below", t.below)] {
                    if let Some(x) = limit {
                        self.finite(path.key(key), key, x);
                    }
                }
            }
        }
        if let Some(other) = &t.relative_to {
            self.read_field(path.key("relative_to"), i, name, other, available);
        }
        if self.finite(path.key("factor"), "factor", t.factor) && t.relative_to.is_none() && t.factor != 1.0 {
            self.report(path.key("factor"), "`factor` is used only with `relative_to`");
        }
    }

    fn calibrate(&mut self, i: usize, path: &Path, name: &str, c: &CalibrateSpec, available: &Available) {
        self.read_field(path.key("field"), i, name, &c.field, available);
        for (device, correction) in &c.table {
            self.correction(&path.key("table").key(device), correction);
        }
        self.correction(&path.key("default"), &c.default);
        match (&c.baseline, c.reference) {
            (Some(baseline), reference) => {
                self.calibrate_baseline(i, path, baseline);
                match reference {
                    None => self.report(
                        path.key("baseline"),
                        "with `baseline`, give `reference`: the value the baseline should read (such as 420 for \
                         outdoor CO2)",
                    ),
                    Some(r) => {
                        self.finite(path.key("reference"), "reference", r);
                    }
                }
            }
            (None, Some(_)) => self.report(path.key("reference"), "`reference` is used only with `baseline`"),
            (None, None) => {}
        }
    }

    fn calibrate_baseline(&mut self, i: usize, path: &Path, baseline: &str) {
        let count = self.spec.operators.len();
        let found = (0..count)
            .map(|j| (j, self.identity(j)))
            .find(|(_, k)| k.name == Some(baseline));
        let message = match found {
            Some((j, known)) if known.kind == Some("baseline") && j < i => return,
            Some((j, known)) if known.kind == Some("baseline") => {
                let _ = known;
                format!("baseline `{baseline}` (operators[{j}]) comes after this calibrate: move it before")
            }
            Some((j, known)) => {
                format!(
                    "`{baseline}` (operators[{j}]) is a {}, not a baseline",
                    known.kind.unwrap_or("operator")
                )
            }
            None if self.chain_uncertain() => return,
            None => {
                let mut m =
                    format!("`baseline` must name an earlier baseline operator; there is no operator `{baseline}`");
                let candidates: Vec<&str> = (0..i)
                    .map(|j| self.identity(j))
                    .filter(|k| k.kind == Some("baseline"))
                    .filter_map(|k| k.name)
                    .collect();
                if let Some(s) = suggest(baseline, candidates) {
                    m.push_str(&format!("; did you mean `{s}`?"));
                }
                m
            }
        };
        self.report(path.key("baseline"), message);
    }

    fn correction(&mut self, path: &Path, c: &Correction) {
        self.finite(path.key("offset"), "offset", c.offset);
        if self.finite(path.key("gain"), "gain", c.gain) && c.gain == 0.0 {
            self.report(path.key("gain"), "`gain` must not be 0");
        }
    }

    fn health(&mut self, i: usize, path: &Path, name: &str, h: &HealthSpec, available: &Available) {
        if let Some(d) = h.offline_after {
            self.duration_positive(path.key("offline_after"), "offline_after", d);
        }
        for (j, flatline) in h.flatline.iter().enumerate() {
            let p = path.key("flatline").index(j);
            self.read_field(p.key("field"), i, name, &flatline.field, available);
            if flatline.readings < 2 {
                self.report(
                    p.key("readings"),
                    format!("`readings` must be at least 2, found {}", flatline.readings),
                );
            }
        }
        if h.report_every == Some(0) {
            self.report(path.key("report_every"), "`report_every` must be at least 1");
        }
    }
}
