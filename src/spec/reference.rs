//! The reference of every key of a pipeline file, for the README.
//!
//! # Layout
//! - [`KEY_DOCS`]: a hand-written table, key path → type and meaning. A path starting with `*`
//!   describes every key path that ends with the rest (the notification `policy` of each sink).
//! - [`undocumented`]: the differences between the table and the keys the config types really
//!   have ([`probe::keys`]); a test keeps it empty, so the reference cannot drift.
//! - [`reference_markdown`]: the generated reference (tables per map, defaults and allowed values
//!   taken from the types), which the README holds between `<!-- reference:start -->` and
//!   `<!-- reference:end -->`.

use std::fmt::Write as _;

use super::probe::{self, KeyInfo, KeyKind};

/// The README markers around the generated reference.
pub const START_MARKER: &str = "<!-- reference:start -->";
pub const END_MARKER: &str = "<!-- reference:end -->";

/// The type and meaning of one key path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyDoc {
    pub path: &'static str,
    pub kind: &'static str,
    pub meaning: &'static str,
}

const fn doc(path: &'static str, kind: &'static str, meaning: &'static str) -> KeyDoc {
    KeyDoc { path, kind, meaning }
}

/// Every key of a pipeline file.
pub const KEY_DOCS: &[KeyDoc] = &[
    doc(
        "version",
        "integer",
        "Format version of the file; this plume reads version 1.",
    ),
    doc(
        "pipeline",
        "name",
        "Name of the pipeline: letters, digits, `-` and `_`. Names the data directory and the checkpoints.",
    ),
    doc("description", "text", "Free text for people."),
    doc(
        "sources",
        "list of sources",
        "Where readings come from. `plume run --input FILE` replaces them with one file.",
    ),
    doc("decode", "map", "How a raw message becomes a reading."),
    doc(
        "operators",
        "list of operators",
        "The per-device operator chain, applied in the order written.",
    ),
    doc("outputs", "list of routes", "Which operator results go to which sinks."),
    doc("runtime", "map", "Shards, key groups, passivation."),
    doc("checkpoint", "map", "Checkpoint interval, data directory, retention."),
    doc(
        "shutdown",
        "map",
        "What happens on graceful shutdown and at the end of a finite input.",
    ),
    doc(
        "embedded_broker",
        "map",
        "Start an MQTT broker inside plume (zero-setup default); absent: none.",
    ),
    // sources
    doc(
        "sources[].file",
        "map",
        "A JSON-lines (or influx line protocol) file, read to its end.",
    ),
    doc("sources[].file.path", "text", "The file."),
    doc(
        "sources[].file.pace",
        "name",
        "`none`: as fast as possible; `event_time`: paced by the readings' event time.",
    ),
    doc(
        "sources[].file.speed",
        "number",
        "With `pace: event_time`, how many times faster than real time.",
    ),
    doc(
        "sources[].stdin",
        "map (no keys)",
        "Lines from standard input: `- stdin`.",
    ),
    doc(
        "sources[].simulator",
        "map",
        "A built-in fleet of simulated air-quality monitors.",
    ),
    doc("sources[].simulator.devices", "integer", "Number of devices."),
    doc(
        "sources[].simulator.interval",
        "duration",
        "Time between two readings of one device, in simulated time.",
    ),
    doc(
        "sources[].simulator.speed",
        "number",
        "Simulated seconds per wall-clock second (1 = real time).",
    ),
    doc(
        "sources[].simulator.episodes",
        "number (0 to 1)",
        "Chance per reading that a pollution episode starts.",
    ),
    doc(
        "sources[].simulator.faults",
        "number (0 to 1)",
        "Chance per reading of a sensor fault (stuck value, spike, dropout).",
    ),
    doc(
        "sources[].simulator.duration",
        "duration",
        "Stop after this much simulated time; absent: run until Ctrl-C.",
    ),
    doc(
        "sources[].simulator.seed",
        "integer",
        "Seed of the random numbers: the same seed gives the same readings.",
    ),
    doc("sources[].mqtt", "map", "Subscribe to an MQTT broker."),
    doc(
        "sources[].mqtt.url",
        "URL",
        "`mqtt://host:port` or `mqtts://host:port` (TLS).",
    ),
    doc(
        "sources[].mqtt.topic",
        "topic template",
        "`{device}` (a whole level, at most once) captures the device id, as in `sensors/{device}/air`; `+` and `#` are MQTT wildcards.",
    ),
    doc(
        "sources[].mqtt.qos",
        "0, 1 or 2",
        "MQTT quality of service of the subscription.",
    ),
    doc(
        "sources[].mqtt.client_id",
        "text",
        "MQTT client id; absent: one is made up.",
    ),
    doc("sources[].mqtt.username", "text", "User name for the broker."),
    doc(
        "sources[].mqtt.password_env",
        "env var name",
        "Name of the environment variable that holds the password.",
    ),
    doc(
        "sources[].mqtt.ca_file",
        "path",
        "PEM file with the CA that signed the broker's certificate (`mqtts://`).",
    ),
    doc("sources[].mqtt.version", "`3.1.1` or `5`", "MQTT protocol version."),
    doc(
        "sources[].mqtt.persistent_session",
        "true/false",
        "Keep the session on the broker while plume is down (clean session off).",
    ),
    doc(
        "sources[].mqtt.shared_group",
        "name",
        "MQTT shared subscription group (`$share/<group>/<topic>`), for several plume nodes.",
    ),
    doc(
        "sources[].mqtt.durable",
        "true/false",
        "Acknowledge a message only once it is synced to the ingest log in the data directory (replayed after a crash); `false`: once handed to the pipeline (a crash loses what is in flight). Needs checkpoints on.",
    ),
    doc("sources[].mqtt.keep_alive", "duration", "MQTT keep-alive interval."),
    doc("sources[].kafka", "map", "Consume Kafka topics in a consumer group."),
    doc("sources[].kafka.brokers", "text", "`host:port[,host:port…]`."),
    doc(
        "sources[].kafka.topics",
        "list of topic names",
        "The topics to consume.",
    ),
    doc("sources[].kafka.group", "text", "Consumer group id."),
    doc(
        "sources[].kafka.device_from",
        "name",
        "`key`: the record key is the device id; `payload`: the payload field `decode.device.field`.",
    ),
    doc(
        "sources[].kafka.time_from",
        "name",
        "`payload`: the event time is `decode.time`; `record`: the record's timestamp.",
    ),
    doc(
        "sources[].kafka.properties",
        "map of text",
        "librdkafka properties passed through (`security.protocol`, `sasl.mechanism`, …).",
    ),
    doc("sources[].kafka.properties.<name>", "text", "One librdkafka property."),
    doc(
        "sources[].kafka.secret_properties_env",
        "map of env var names",
        "librdkafka properties whose values come from environment variables (`sasl.password: KAFKA_PASSWORD`).",
    ),
    doc(
        "sources[].kafka.secret_properties_env.<name>",
        "env var name",
        "The variable that holds this property's value.",
    ),
    doc(
        "sources[].kafka.handoff_dir",
        "path",
        "Directory shared by the group's members for partition hand-offs (default `kafka-handoff/<group>` beside the data directory).",
    ),
    doc(
        "sources[].kafka.handoff_refresh",
        "duration",
        "Refresh the hand-off of each partition read since, at the first durable checkpoint this long after the previous refresh (`0s`: every checkpoint), so a member that dies leaves its partitions' state for the next owner; `null`: only when a partition is given up. Default `30s`.",
    ),
    // decode
    doc(
        "decode.format",
        "name",
        "`json`: one JSON object per message or line; `influx`: InfluxDB line protocol.",
    ),
    doc(
        "decode.device",
        "map",
        "Where the device id comes from: exactly one of `field`, `tag`, `topic: true`.",
    ),
    doc(
        "decode.device.field",
        "text",
        "The payload key (JSON) or line field (influx) that holds the device id.",
    ),
    doc("decode.device.tag", "text", "The influx tag that holds the device id."),
    doc(
        "decode.device.topic",
        "true/false",
        "Take the device id from the MQTT topic's `{device}`.",
    ),
    doc(
        "decode.time",
        "map",
        "Where the event time comes from; absent: the arrival time (JSON) or the line's timestamp in ns (influx).",
    ),
    doc(
        "decode.time.field",
        "text",
        "JSON: the payload key that holds the event time (required). Influx: leave it out, the line's timestamp is used.",
    ),
    doc(
        "decode.time.unit",
        "name",
        "Unit of the event time: `s`, `ms`, `us`, `ns` (numbers) or `rfc3339` (text). Default: `ms` for JSON, `ns` for influx.",
    ),
    doc(
        "decode.fields",
        "map of fields",
        "The measured fields, by name (at most 64 with those operators produce).",
    ),
    doc(
        "decode.fields.<name>",
        "map",
        "One measured field: `pm25: { min: 0, max: 1000 }`, or `pm25: {}` for the defaults.",
    ),
    doc("decode.fields.<name>.type", "name", "`float`, `int` or `bool`."),
    doc(
        "decode.fields.<name>.min",
        "number",
        "Values below this are out of range.",
    ),
    doc(
        "decode.fields.<name>.max",
        "number",
        "Values above this are out of range.",
    ),
    doc(
        "decode.fields.<name>.required",
        "true/false",
        "A reading without this field is a dead letter (otherwise the field is just absent).",
    ),
    doc(
        "decode.fields.<name>.out_of_range",
        "name",
        "`flag`: treated as absent and counted; `dead_letter`: the whole reading goes to dead letters; `keep`: kept and counted.",
    ),
    doc(
        "decode.dead_letter_max_bytes",
        "integer",
        "Largest part of a raw payload copied into a dead letter.",
    ),
    // operators
    doc(
        "operators[].window",
        "map",
        "Event-time windows per device: tumbling (`every`) or sliding (`every` and `slide`). Results: `window`.",
    ),
    doc(
        "operators[].window.name",
        "name",
        "Name for routes and output records; default: the kind (`window`).",
    ),
    doc("operators[].window.every", "duration", "Window length."),
    doc(
        "operators[].window.slide",
        "duration",
        "Hop between window starts (sliding windows, at most `every`); absent: tumbling.",
    ),
    doc(
        "operators[].window.lateness",
        "duration",
        "Allowed lateness: the device's watermark is its largest event time minus this; later readings go to `late`.",
    ),
    doc(
        "operators[].window.fields",
        "list of field names",
        "The fields the list form of `aggregates` applies to.",
    ),
    doc(
        "operators[].window.aggregates",
        "list or map",
        "`[avg, max]` for every field in `fields`, or `{ pm25: [avg, max], co2: [avg] }` per field. `count` is always reported.",
    ),
    doc(
        "operators[].window.idle_flush",
        "duration",
        "Close a silent device's windows after this much processing time without readings.",
    ),
    doc(
        "operators[].hysteresis",
        "map",
        "Pollution events with enter/exit thresholds and debounce. Results: `event_start`, `event_end`.",
    ),
    doc(
        "operators[].hysteresis.name",
        "name",
        "Name for routes and output records; default: `hysteresis`.",
    ),
    doc("operators[].hysteresis.field", "field name", "The field watched."),
    doc(
        "operators[].hysteresis.enter",
        "number",
        "An event opens when the value reaches this (`>=` above, `<=` below).",
    ),
    doc(
        "operators[].hysteresis.exit",
        "number",
        "An open event closes when the value reaches this; not above `enter` (direction above), not below it (below).",
    ),
    doc(
        "operators[].hysteresis.direction",
        "name",
        "`above`: high values are bad (PM2.5, CO2); `below`: low values are bad (humidity too low).",
    ),
    doc(
        "operators[].hysteresis.min_duration",
        "duration",
        "The enter condition must hold this long (event time) before the event opens.",
    ),
    doc(
        "operators[].hysteresis.min_clear",
        "duration",
        "The exit condition must hold this long (event time) before the event closes.",
    ),
    doc(
        "operators[].hysteresis.severity",
        "map of numbers",
        "Severity bands by peak value: `{ moderate: 35, high: 55, severe: 150 }`.",
    ),
    doc(
        "operators[].hysteresis.severity.<name>",
        "number",
        "The peak value from which an event has this severity.",
    ),
    doc(
        "operators[].baseline",
        "map",
        "A learned per-device baseline; later operators can read it as a field named after the operator. Results: `baseline`, `deviation`.",
    ),
    doc(
        "operators[].baseline.name",
        "name",
        "Name for routes, output records and the produced field; default: `baseline`.",
    ),
    doc("operators[].baseline.field", "field name", "The field learned."),
    doc(
        "operators[].baseline.method",
        "name",
        "`ewma`: exponential average; `welford`: running mean and variance with deviation events; `rolling_min`: lowest value over `days`; `hourly_profile`: one value per hour of day.",
    ),
    doc(
        "operators[].baseline.alpha",
        "number (0 to 1]",
        "EWMA weight (and hourly profile weight).",
    ),
    doc(
        "operators[].baseline.zscore",
        "number",
        "Welford: a deviation event when |z| exceeds this (after `warmup` readings).",
    ),
    doc(
        "operators[].baseline.warmup",
        "integer",
        "Welford: readings before deviation events start.",
    ),
    doc(
        "operators[].baseline.days",
        "integer",
        "Rolling minimum: how many days to look back (at least 1).",
    ),
    doc(
        "operators[].baseline.utc_offset_hours",
        "integer",
        "Hourly profile: offset of local time from UTC, in hours.",
    ),
    doc(
        "operators[].baseline.emit",
        "name",
        "`end`: report the value once at the end of input or on shutdown; `every`: after every reading; `never`: only for later operators.",
    ),
    doc(
        "operators[].smooth",
        "map",
        "Smoothing; the smoothed value is a field for later operators. Results: `smoothed`.",
    ),
    doc(
        "operators[].smooth.name",
        "name",
        "Name for routes and output records; default: `smooth`.",
    ),
    doc("operators[].smooth.field", "field name", "The field smoothed."),
    doc(
        "operators[].smooth.method",
        "name",
        "`sma`: moving average of the last `n` readings; `ewma`: exponential, `alpha`; `holt`: level `alpha` and trend `beta`.",
    ),
    doc("operators[].smooth.n", "integer", "SMA: number of readings."),
    doc(
        "operators[].smooth.alpha",
        "number (0 to 1]",
        "EWMA and Holt: level weight.",
    ),
    doc("operators[].smooth.beta", "number (0 to 1]", "Holt: trend weight."),
    doc(
        "operators[].smooth.output",
        "field name",
        "Name of the produced field; default: `<field>_smooth`.",
    ),
    doc(
        "operators[].smooth.emit",
        "true/false",
        "Emit every smoothed value as a result.",
    ),
    doc(
        "operators[].threshold",
        "map",
        "Instant threshold crossings. Results: `threshold`.",
    ),
    doc(
        "operators[].threshold.name",
        "name",
        "Name for routes and output records; default: `threshold`.",
    ),
    doc("operators[].threshold.field", "field name", "The field compared."),
    doc(
        "operators[].threshold.above",
        "number",
        "Beyond when the value is above this (give `above` or `below`).",
    ),
    doc(
        "operators[].threshold.below",
        "number",
        "Beyond when the value is below this (give `above` or `below`).",
    ),
    doc(
        "operators[].threshold.relative_to",
        "field name",
        "Move the limits with this field (such as a baseline): beyond when above `above` + `factor` × it (or below `below` + `factor` × it); without `above`/`below`, above `factor` × it.",
    ),
    doc(
        "operators[].threshold.factor",
        "number",
        "Multiplier of `relative_to` (default 1).",
    ),
    doc(
        "operators[].threshold.changes_only",
        "true/false",
        "Emit only when the state changes (otherwise every reading beyond the threshold).",
    ),
    doc(
        "operators[].calibrate",
        "map",
        "Calibration `value * gain + offset`, from a table or a learned baseline; changes the field in place.",
    ),
    doc(
        "operators[].calibrate.name",
        "name",
        "Name for routes and output records; default: `calibrate`.",
    ),
    doc("operators[].calibrate.field", "field name", "The field corrected."),
    doc(
        "operators[].calibrate.table",
        "map of corrections",
        "Per-device corrections by device id.",
    ),
    doc(
        "operators[].calibrate.table.<name>",
        "map",
        "The correction of one device (the key is its id).",
    ),
    doc(
        "operators[].calibrate.table.<name>.offset",
        "number",
        "Added after the gain.",
    ),
    doc(
        "operators[].calibrate.table.<name>.gain",
        "number",
        "Multiplies the value.",
    ),
    doc(
        "operators[].calibrate.default",
        "map",
        "The correction for devices not in the table.",
    ),
    doc(
        "operators[].calibrate.default.offset",
        "number",
        "Added after the gain.",
    ),
    doc("operators[].calibrate.default.gain", "number", "Multiplies the value."),
    doc(
        "operators[].calibrate.baseline",
        "operator name",
        "Learned correction: shift so that this earlier `baseline` operator reads `reference`.",
    ),
    doc(
        "operators[].calibrate.reference",
        "number",
        "With `baseline`: the value the baseline should read (such as 420 ppm for outdoor CO2).",
    ),
    doc(
        "operators[].health",
        "map",
        "Device health: offline/online, flatline, out-of-range counts. Results: `health`.",
    ),
    doc(
        "operators[].health.name",
        "name",
        "Name for routes and output records; default: `health`.",
    ),
    doc(
        "operators[].health.offline_after",
        "duration",
        "A device without data for this long (processing time) goes offline.",
    ),
    doc(
        "operators[].health.flatline",
        "list",
        "Stuck sensors: the same value for `readings` readings in a row.",
    ),
    doc(
        "operators[].health.flatline[].field",
        "field name",
        "The field watched.",
    ),
    doc(
        "operators[].health.flatline[].readings",
        "integer",
        "How many equal readings in a row make a flatline (at least 2).",
    ),
    doc(
        "operators[].health.report_every",
        "integer",
        "Emit a health report with out-of-range counts every this many readings.",
    ),
    // outputs
    doc(
        "outputs[].when",
        "name or list of names",
        "Operator names, or `all`, `late`, `dead_letters`, `summary`.",
    ),
    doc(
        "outputs[].events",
        "list of names",
        "Only these kinds of results (`window`, `event_start` or `start`, `event_end` or `end`, `baseline`, `deviation`, `smoothed`, `threshold`, `health`, `late`, `dead_letter`, `summary`); all if empty.",
    ),
    doc("outputs[].to", "list of sinks", "Where the results go."),
    doc("outputs[].to[].stdout", "map", "Standard output: `- stdout`."),
    doc(
        "outputs[].to[].stdout.format",
        "name",
        "`json`: one record per line; `text`: a line for people.",
    ),
    doc(
        "outputs[].to[].file",
        "map",
        "JSON lines appended to a file; exactly-once across crashes when checkpoints are on.",
    ),
    doc("outputs[].to[].file.path", "text", "The file."),
    doc(
        "outputs[].to[].webhook",
        "map",
        "A signed webhook (Standard Webhooks); the event id travels as `webhook-id`.",
    ),
    doc("outputs[].to[].webhook.url", "URL", "`http://` or `https://` endpoint."),
    doc(
        "outputs[].to[].webhook.secret_env",
        "env var name",
        "The variable that holds the `whsec_…` signing secret.",
    ),
    doc(
        "outputs[].to[].webhook.timeout",
        "duration",
        "Timeout of one delivery attempt.",
    ),
    doc(
        "outputs[].to[].webhook.max_age",
        "duration",
        "After this long without success an event goes to dead letters.",
    ),
    doc(
        "outputs[].to[].webhook.concurrency",
        "integer",
        "Deliveries in flight at once.",
    ),
    doc(
        "outputs[].to[].webhook.backoff",
        "duration",
        "First retry delay; doubled per attempt (at most 5m), with jitter, never before `Retry-After`.",
    ),
    doc(
        "outputs[].to[].webhook.breaker_open",
        "duration",
        "After 5 failures in a row the endpoint gets one probe request per this long.",
    ),
    doc(
        "outputs[].to[].push",
        "map",
        "Mobile push: exactly one of `fcm`, `apns`, `ntfy`.",
    ),
    doc("outputs[].to[].push.fcm", "map", "Firebase Cloud Messaging."),
    doc(
        "outputs[].to[].push.fcm.service_account_env",
        "env var name",
        "The variable that holds the service-account JSON (or a path to it).",
    ),
    doc(
        "outputs[].to[].push.fcm.endpoint",
        "URL",
        "Override of the FCM endpoint (tests).",
    ),
    doc(
        "outputs[].to[].push.fcm.token_endpoint",
        "URL",
        "Override of the OAuth token endpoint (tests).",
    ),
    doc(
        "outputs[].to[].push.fcm.subscribers",
        "path",
        "Runs without a data directory: JSON file of device tokens, `{\"<device>\": [\"<token>\", …], \"*\": […]}` (`*`: every device). With one, the store's subscriptions (`plume subscribers`).",
    ),
    doc(
        "outputs[].to[].push.fcm.timeout",
        "duration",
        "Timeout of one delivery attempt.",
    ),
    doc(
        "outputs[].to[].push.fcm.max_age",
        "duration",
        "After this long without success a notification goes to dead letters.",
    ),
    doc(
        "outputs[].to[].push.fcm.concurrency",
        "integer",
        "Deliveries in flight at once.",
    ),
    doc(
        "outputs[].to[].push.fcm.backoff",
        "duration",
        "First retry delay; doubled per attempt (at most 5m), with jitter, never before `Retry-After`.",
    ),
    doc(
        "outputs[].to[].push.fcm.breaker_open",
        "duration",
        "After 5 failures in a row the service gets one probe request per this long.",
    ),
    doc("outputs[].to[].push.apns", "map", "Apple Push Notification service."),
    doc("outputs[].to[].push.apns.team_id", "text", "Apple developer team id."),
    doc("outputs[].to[].push.apns.key_id", "text", "Id of the signing key."),
    doc(
        "outputs[].to[].push.apns.key_env",
        "env var name",
        "The variable that holds the `.p8` ES256 private key (PEM).",
    ),
    doc(
        "outputs[].to[].push.apns.topic",
        "text",
        "The app's bundle id (`apns-topic`).",
    ),
    doc(
        "outputs[].to[].push.apns.endpoint",
        "URL",
        "Override of the APNs endpoint (tests).",
    ),
    doc(
        "outputs[].to[].push.apns.subscribers",
        "path",
        "Runs without a data directory: JSON file of device tokens, `{\"<device>\": [\"<token>\", …], \"*\": […]}` (`*`: every device). With one, the store's subscriptions (`plume subscribers`).",
    ),
    doc(
        "outputs[].to[].push.apns.timeout",
        "duration",
        "Timeout of one delivery attempt.",
    ),
    doc(
        "outputs[].to[].push.apns.max_age",
        "duration",
        "After this long without success a notification goes to dead letters.",
    ),
    doc(
        "outputs[].to[].push.apns.concurrency",
        "integer",
        "Deliveries in flight at once.",
    ),
    doc(
        "outputs[].to[].push.apns.backoff",
        "duration",
        "First retry delay; doubled per attempt (at most 5m), with jitter, never before `Retry-After`.",
    ),
    doc(
        "outputs[].to[].push.apns.breaker_open",
        "duration",
        "After 5 failures in a row the service gets one probe request per this long.",
    ),
    doc(
        "outputs[].to[].push.ntfy",
        "map",
        "ntfy.sh or a self-hosted ntfy server.",
    ),
    doc("outputs[].to[].push.ntfy.server", "URL", "The ntfy server."),
    doc(
        "outputs[].to[].push.ntfy.topic",
        "text",
        "The ntfy topic (letters, digits, `-`, `_`).",
    ),
    doc(
        "outputs[].to[].push.ntfy.token_env",
        "env var name",
        "The variable that holds an access token.",
    ),
    doc(
        "outputs[].to[].push.ntfy.timeout",
        "duration",
        "Timeout of one delivery attempt.",
    ),
    doc(
        "outputs[].to[].push.ntfy.max_age",
        "duration",
        "After this long without success a notification goes to dead letters.",
    ),
    doc(
        "outputs[].to[].push.ntfy.concurrency",
        "integer",
        "Deliveries in flight at once.",
    ),
    doc(
        "outputs[].to[].push.ntfy.backoff",
        "duration",
        "First retry delay; doubled per attempt (at most 5m), with jitter, never before `Retry-After`.",
    ),
    doc(
        "outputs[].to[].push.ntfy.breaker_open",
        "duration",
        "After 5 failures in a row the service gets one probe request per this long.",
    ),
    doc(
        "*.policy",
        "map",
        "Cooldown, quiet hours and message template of a notifier.",
    ),
    doc(
        "*.policy.cooldown",
        "duration",
        "At most one notification per device and operator in this time.",
    ),
    doc(
        "*.policy.quiet_hours",
        "map",
        "Hold notifications back during these hours (except `critical` severities).",
    ),
    doc(
        "*.policy.quiet_hours.from",
        "HH:MM",
        "Start of the quiet hours (`22:00`).",
    ),
    doc("*.policy.quiet_hours.to", "HH:MM", "End of the quiet hours (`07:00`)."),
    doc(
        "*.policy.quiet_hours.timezone",
        "IANA time zone",
        "Time zone of `from` and `to` (`Europe/Zurich`).",
    ),
    doc(
        "*.policy.quiet_hours.critical",
        "list of names",
        "Severities delivered even in quiet hours.",
    ),
    doc("*.policy.title", "text", "Title template of the notification."),
    doc("*.policy.body", "text", "Body template of the notification."),
    doc("outputs[].to[].mqtt", "map", "Publish results to an MQTT broker."),
    doc(
        "outputs[].to[].mqtt.url",
        "URL",
        "`mqtt://host:port` or `mqtts://host:port`.",
    ),
    doc(
        "outputs[].to[].mqtt.topic",
        "topic template",
        "Topic to publish to; `{device}` and `{operator}` are filled in.",
    ),
    doc("outputs[].to[].mqtt.qos", "0, 1 or 2", "MQTT quality of service."),
    doc(
        "outputs[].to[].mqtt.retain",
        "true/false",
        "Publish with the retain flag.",
    ),
    doc(
        "outputs[].to[].mqtt.client_id",
        "text",
        "MQTT client id; absent: `plume-<pipeline>-out-<sink index>`.",
    ),
    doc("outputs[].to[].mqtt.username", "text", "User name for the broker."),
    doc(
        "outputs[].to[].mqtt.password_env",
        "env var name",
        "The variable that holds the password.",
    ),
    doc(
        "outputs[].to[].mqtt.ca_file",
        "path",
        "PEM file with the CA that signed the broker's certificate (`mqtts://`).",
    ),
    doc("outputs[].to[].kafka", "map", "Produce results to a Kafka topic."),
    doc("outputs[].to[].kafka.brokers", "text", "`host:port[,host:port…]`."),
    doc("outputs[].to[].kafka.topic", "topic name", "The topic."),
    doc(
        "outputs[].to[].kafka.properties",
        "map of text",
        "librdkafka properties passed through.",
    ),
    doc(
        "outputs[].to[].kafka.properties.<name>",
        "text",
        "One librdkafka property.",
    ),
    doc(
        "outputs[].to[].kafka.secret_properties_env",
        "map of env var names",
        "librdkafka properties whose values come from environment variables.",
    ),
    doc(
        "outputs[].to[].kafka.secret_properties_env.<name>",
        "env var name",
        "The variable that holds this property's value.",
    ),
    // runtime, checkpoint, shutdown, embedded broker
    doc("runtime.shards", "integer", "Shard threads; 0 = one per core."),
    doc(
        "runtime.key_groups",
        "integer",
        "Fixed number of key groups (device id → stable hash → key group → shard).",
    ),
    doc(
        "runtime.passivate_after",
        "duration",
        "Passivate a device actor after this much processing time without readings.",
    ),
    doc(
        "runtime.sink_queue",
        "integer",
        "Bound on the results waiting for one sink before the devices are slowed down.",
    ),
    doc(
        "checkpoint.interval",
        "duration",
        "Take a checkpoint this often; `null`: only at graceful shutdown.",
    ),
    doc(
        "checkpoint.data_dir",
        "path",
        "Where checkpoints live; default: `checkpoints/<pipeline>`.",
    ),
    doc("checkpoint.retain", "integer", "How many complete checkpoints to keep."),
    doc(
        "checkpoint.enabled",
        "true/false",
        "`false` turns state persistence off entirely (in-memory run).",
    ),
    doc(
        "shutdown.flush",
        "true/false",
        "Emit still-open windows and final baselines on graceful shutdown and at the end of input.",
    ),
    doc(
        "shutdown.drain_timeout",
        "duration",
        "Longest wait for in-flight readings and deliveries on graceful shutdown.",
    ),
    doc(
        "embedded_broker.port",
        "integer",
        "TCP port of the embedded MQTT broker.",
    ),
    doc(
        "embedded_broker.bind",
        "IP address",
        "Address the embedded broker listens on.",
    ),
];

/// The row that describes a key path (an exact row first, then a `*` row).
pub fn doc_for(path: &str) -> Option<&'static KeyDoc> {
    KEY_DOCS.iter().find(|d| d.path == path).or_else(|| {
        KEY_DOCS
            .iter()
            .find(|d| d.path.strip_prefix('*').is_some_and(|suffix| path.ends_with(suffix)))
    })
}

/// Keys without a row, and rows that describe no key: empty when the table is complete.
pub fn undocumented() -> Vec<String> {
    let keys = probe::keys();
    let mut problems = Vec::new();
    for key in keys {
        if doc_for(&key.path).is_none() {
            problems.push(format!("key `{}` has no row in config::reference::KEY_DOCS", key.path));
        }
    }
    for (i, row) in KEY_DOCS.iter().enumerate() {
        if KEY_DOCS[..i].iter().any(|r| r.path == row.path) {
            problems.push(format!("row `{}` is in KEY_DOCS twice", row.path));
        }
        let used = keys
            .iter()
            .any(|k| doc_for(&k.path).is_some_and(|d| std::ptr::eq(d, row)));
        if !used {
            problems.push(format!(
                "row `{}` of KEY_DOCS describes no key of the config types",
                row.path
            ));
        }
    }
    problems
}

fn render_json(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "none".to_string(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => {
            format!("[{}]", items.iter().map(render_json).collect::<Vec<_>>().join(", "))
        }
        serde_json::Value::Object(map) => {
            let entries: Vec<String> = map
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{k}: {}", render_json(v)))
                .collect();
            if entries.is_empty() {
                "{}".to_string()
            } else {
                format!("{{ {} }}", entries.join(", "))
            }
        }
        other => other.to_string(),
    }
}

fn default_cell(key: &KeyInfo) -> String {
    if key.required {
        return "**required**".to_string();
    }
    match (&key.default, key.kind) {
        (_, KeyKind::Variant) | (_, KeyKind::MapEntry) => String::new(),
        (Some(value), _) => format!("`{}`", render_json(value)),
        (None, _) => String::new(),
    }
}

fn escape_cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The section heading of the keys under `parent`.
fn heading(parent: &str) -> String {
    if parent.is_empty() {
        "Top level".to_string()
    } else {
        format!("`{parent}`")
    }
}

/// The reference as Markdown: one table per map, in the order of the types.
pub fn reference_markdown() -> String {
    let keys = probe::keys();
    let mut parents: Vec<String> = Vec::new();
    tree_order("", keys, &mut parents);
    let mut out = String::new();
    out.push_str(
        "Generated from the config types (`cargo test` checks that it is current; \
         `PLUME_UPDATE_README=1 cargo test --release --test pipeline_files` rewrites it). \
         `a[]` stands for each item of the list `a`, `<name>` for a key you choose, \
         and `a.kind` for the kind `kind` of an item (`- window: {…}`).\n",
    );
    // Maps whose rows all come from `*` rows are written once, under every path they appear at.
    let mut shared_written: Vec<Vec<&str>> = Vec::new();
    for parent in &parents {
        let parent = parent.as_str();
        let rows: Vec<&KeyInfo> = keys.iter().filter(|k| k.parent() == parent).collect();
        let patterns: Vec<&str> = rows.iter().filter_map(|k| doc_for(&k.path)).map(|d| d.path).collect();
        let shared = patterns.iter().all(|p| p.starts_with('*'));
        let title = if shared {
            if shared_written.contains(&patterns) {
                continue;
            }
            shared_written.push(patterns.clone());
            let all: Vec<String> = parents_with_patterns(keys, &patterns)
                .iter()
                .map(|p| format!("`{p}`"))
                .collect();
            all.join(", ")
        } else {
            heading(parent)
        };
        let _ = write!(
            out,
            "\n#### {title}\n\n| key | type | default | meaning |\n| --- | --- | --- | --- |\n"
        );
        for key in rows {
            let Some(row) = doc_for(&key.path) else { continue };
            let mut meaning = row.meaning.to_string();
            if !key.values.is_empty() {
                let values: Vec<String> = key.values.iter().map(|v| format!("`{v}`")).collect();
                let _ = write!(meaning, " One of: {}.", values.join(", "));
            }
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} |",
                key.name(),
                escape_cell(row.kind),
                escape_cell(&default_cell(key)),
                escape_cell(&meaning)
            );
        }
    }
    out
}

/// The maps that have keys, each after the map that holds it, in the order of the types.
fn tree_order(parent: &str, keys: &[KeyInfo], out: &mut Vec<String>) {
    out.push(parent.to_string());
    for key in keys.iter().filter(|k| k.parent() == parent) {
        for candidate in [key.path.clone(), format!("{}[]", key.path)] {
            if !out.contains(&candidate) && keys.iter().any(|k| k.parent() == candidate) {
                tree_order(&candidate, keys, out);
            }
        }
    }
}

fn parents_with_patterns<'k>(keys: &'k [KeyInfo], patterns: &[&str]) -> Vec<&'k str> {
    let mut parents: Vec<&str> = Vec::new();
    for key in keys {
        let parent = key.parent();
        if parents.contains(&parent) {
            continue;
        }
        let rows: Vec<&str> = keys
            .iter()
            .filter(|k| k.parent() == parent)
            .filter_map(|k| doc_for(&k.path))
            .map(|d| d.path)
            .collect();
        if rows == patterns {
            parents.push(parent);
        }
    }
    parents
}

/// `readme` with its reference block replaced by `reference`; `None` if the markers are missing.
pub fn replace_reference(readme: &str, reference: &str) -> Option<String> {
    let start = readme.find(START_MARKER)? + START_MARKER.len();
    let end = start + readme[start..].find(END_MARKER)?;
    Some(format!(
        "{}\n{}\n{}",
        &readme[..start],
        reference.trim_end(),
        &readme[end..]
    ))
}

/// The reference block currently in `readme`.
pub fn current_reference(readme: &str) -> Option<&str> {
    let start = readme.find(START_MARKER)? + START_MARKER.len();
    let end = start + readme[start..].find(END_MARKER)?;
    Some(readme[start..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_documented_and_every_row_is_a_key() {
        let problems = undocumented();
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn the_reference_has_defaults_values_and_shared_tables_once() {
        let md = reference_markdown();
        assert!(md.contains("| `key_groups` | integer | `256` |"), "{md}");
        assert!(md.contains("| `every` | duration | **required** |"), "{md}");
        assert!(md.contains("One of: `json`, `influx`."), "{md}");
        assert_eq!(md.matches("| `cooldown` |").count(), 1, "{md}");
        assert!(
            md.contains("`outputs[].to[].webhook.policy`, `outputs[].to[].push.fcm.policy`"),
            "{md}"
        );
    }

    #[test]
    fn replaces_the_block_between_the_markers() {
        let readme = format!("# x\n{START_MARKER}\nold\n{END_MARKER}\ntail\n");
        let new = replace_reference(&readme, "new\n").unwrap();
        assert_eq!(new, format!("# x\n{START_MARKER}\nnew\n{END_MARKER}\ntail\n"));
        assert_eq!(current_reference(&new), Some("new"));
    }
}
