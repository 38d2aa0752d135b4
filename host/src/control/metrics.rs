//! `/metrics` in the Prometheus text format, from the node's deployment
//! statuses. Names follow Prometheus' conventions (`_total` counters,
//! `_seconds` histograms, base units); every series is labelled by
//! deployment, and the lag also by topic and partition.

use std::fmt::Write as _;

use crate::runner::histogram::Histogram;
use crate::runner::{DeploymentState, DeploymentStatus};

/// A label value, escaped as the text format wants.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A family with one sample per deployment, `get` of its status.
fn per_deployment(
    out: &mut String,
    statuses: &[DeploymentStatus],
    name: &str,
    kind: &str,
    help: &str,
    get: impl Fn(&DeploymentStatus) -> u64,
) {
    family(out, name, kind, help);
    for s in statuses {
        let _ = writeln!(
            out,
            "{name}{{deployment=\"{}\"}} {}",
            label(&s.name),
            get(s)
        );
    }
}

fn histogram(out: &mut String, name: &str, deployment: &str, h: &Histogram) {
    for (le, count) in h.cumulative() {
        let _ = writeln!(
            out,
            "{name}_bucket{{deployment=\"{deployment}\",le=\"{le}\"}} {count}"
        );
    }
    let _ = writeln!(out, "{name}_sum{{deployment=\"{deployment}\"}} {}", h.sum);
    let _ = writeln!(
        out,
        "{name}_count{{deployment=\"{deployment}\"}} {}",
        h.count
    );
}

/// Every [`DeploymentState`], by its name.
const STATES: [&str; 5] = ["starting", "running", "backing_off", "failed", "stopped"];

/// A state's name, as in the status' `state` field.
pub fn state_name(state: &DeploymentState) -> &'static str {
    match state {
        DeploymentState::Starting => "starting",
        DeploymentState::Running => "running",
        DeploymentState::BackingOff { .. } => "backing_off",
        DeploymentState::Failed { .. } => "failed",
        DeploymentState::Stopped => "stopped",
    }
}

/// The text of `/metrics`.
pub fn render(statuses: &[DeploymentStatus]) -> String {
    let mut out = String::new();
    type Counter = fn(&DeploymentStatus) -> u64;
    let counters: [(&str, &str, Counter); 12] = [
        (
            "runnel_records_in_total",
            "Records read from the input topics and run.",
            |s| s.records_in,
        ),
        (
            "runnel_records_out_total",
            "Records written to the output topics.",
            |s| s.records_out,
        ),
        (
            "runnel_records_filtered_total",
            "Records a filter dropped (or a map turned into nothing).",
            |s| s.filtered,
        ),
        (
            "runnel_records_dead_lettered_total",
            "Records sent to the dead-letter topic.",
            |s| s.dead_lettered,
        ),
        (
            "runnel_traps_total",
            "Records that made the function trap.",
            |s| s.traps,
        ),
        (
            "runnel_instance_restarts_total",
            "Instances replaced by a fresh one after a trap.",
            |s| s.restarts,
        ),
        (
            "runnel_deployment_failures_total",
            "Times the deployment failed (a thread panicked, or the dead-letter topic refused a record) and was started again.",
            |s| s.failures,
        ),
        (
            "runnel_guest_log_dropped_bytes_total",
            "Bytes of the function's stdout and stderr dropped by the log caps (per call, per second), by the version running now.",
            |s| s.log_dropped_bytes,
        ),
        (
            "runnel_swaps_total",
            "Versions swapped in on this node.",
            |s| s.swaps,
        ),
        (
            "runnel_state_writes_total",
            "A processor's state writes, each also produced to its store's changelog.",
            |s| s.state_writes,
        ),
        (
            "runnel_state_restores_total",
            "Partitions whose state this node restored (from the changelog or a local checkpoint).",
            |s| s.restores,
        ),
        (
            "runnel_state_restores_from_checkpoint_total",
            "Of those restores, the ones that kept the local store, its checkpoint holding: nothing read.",
            |s| s.restores_from_checkpoint,
        ),
    ];
    for (name, help, get) in counters {
        per_deployment(&mut out, statuses, name, "counter", help, get);
    }
    per_deployment(
        &mut out,
        statuses,
        "runnel_deployment_version",
        "gauge",
        "The deployment's version running on this node.",
        |s| s.version,
    );
    family(
        &mut out,
        "runnel_deployment_up",
        "gauge",
        "1 if the deployment runs (or waits for records), 0 if it backs off, failed or stopped.",
    );
    for s in statuses {
        let up = matches!(
            s.state,
            DeploymentState::Running | DeploymentState::Starting
        );
        let _ = writeln!(
            out,
            "runnel_deployment_up{{deployment=\"{}\"}} {}",
            label(&s.name),
            u8::from(up)
        );
    }
    family(
        &mut out,
        "runnel_deployment_state",
        "gauge",
        "1 for the state the deployment is in (starting, running, backing_off, failed, stopped), 0 for the others.",
    );
    for s in statuses {
        for state in STATES {
            let _ = writeln!(
                out,
                "runnel_deployment_state{{deployment=\"{}\",state=\"{state}\"}} {}",
                label(&s.name),
                u8::from(state_name(&s.state) == state)
            );
        }
    }
    family(
        &mut out,
        "runnel_consumer_lag",
        "gauge",
        "Records between the committable offset and the end of the partition.",
    );
    for s in statuses {
        for p in &s.partitions {
            if let Some(lag) = p.lag {
                let _ = writeln!(
                    out,
                    "runnel_consumer_lag{{deployment=\"{}\",topic=\"{}\",partition=\"{}\"}} {lag}",
                    label(&s.name),
                    label(&p.topic),
                    p.partition
                );
            }
        }
    }
    family(
        &mut out,
        "runnel_output_records_total",
        "counter",
        "Records written to each output topic.",
    );
    for s in statuses {
        for (topic, n) in &s.records_out_by_topic {
            let _ = writeln!(
                out,
                "runnel_output_records_total{{deployment=\"{}\",topic=\"{}\"}} {n}",
                label(&s.name),
                label(topic),
            );
        }
    }
    family(
        &mut out,
        "runnel_state_restore_records_read",
        "gauge",
        "Changelog records read so far by each restore under way, by input partition.",
    );
    for s in statuses {
        for r in &s.restoring {
            let _ = writeln!(
                out,
                "runnel_state_restore_records_read{{deployment=\"{}\",topic=\"{}\",partition=\"{}\"}} {}",
                label(&s.name),
                label(&r.topic),
                r.partition,
                r.records_read
            );
        }
    }
    type LastRestore = fn(&crate::runner::RestoreReport) -> f64;
    let last: [(&str, &str, LastRestore); 3] = [
        (
            "runnel_state_last_restore_seconds",
            "How long the last restore on this node took.",
            |r| r.ms / 1e3,
        ),
        (
            "runnel_state_last_restore_keys",
            "Keys the last restore on this node rebuilt.",
            |r| r.keys as f64,
        ),
        (
            "runnel_state_last_restore_records",
            "Changelog records the last restore on this node read.",
            |r| r.counts.records as f64,
        ),
    ];
    for (name, help, get) in last {
        family(&mut out, name, "gauge", help);
        for s in statuses {
            if let Some(r) = &s.last_restore {
                let _ = writeln!(
                    out,
                    "{name}{{deployment=\"{}\"}} {}",
                    label(&s.name),
                    get(r)
                );
            }
        }
    }
    per_deployment(
        &mut out,
        statuses,
        "runnel_instance_memory_bytes",
        "gauge",
        "Linear memory of the instance that ran the last batch.",
        |s| s.memory_bytes,
    );
    per_deployment(
        &mut out,
        statuses,
        "runnel_records_in_flight",
        "gauge",
        "Records handed to the producer and not yet acknowledged or failed.",
        |s| s.in_flight,
    );
    family(
        &mut out,
        "runnel_batch_duration_seconds",
        "histogram",
        "Time per batch: the call into the function and producing its outputs.",
    );
    for s in statuses {
        histogram(
            &mut out,
            "runnel_batch_duration_seconds",
            &label(&s.name),
            &s.batch_seconds,
        );
    }
    family(
        &mut out,
        "runnel_call_duration_seconds",
        "histogram",
        "Time per call into the function (one batch).",
    );
    for s in statuses {
        histogram(
            &mut out,
            "runnel_call_duration_seconds",
            &label(&s.name),
            &s.call_seconds,
        );
    }
    family(
        &mut out,
        "runnel_output_latency_seconds",
        "histogram",
        "From the poll of an output's input (its batch's first record) to the broker's acknowledgement of the output.",
    );
    for s in statuses {
        histogram(
            &mut out,
            "runnel_output_latency_seconds",
            &label(&s.name),
            &s.output_seconds,
        );
    }
    family(
        &mut out,
        "runnel_event_age_seconds",
        "histogram",
        "From an output's input record timestamp to the broker's acknowledgement of the output (needs producers' clocks to agree; meaningless for replays).",
    );
    for s in statuses {
        histogram(
            &mut out,
            "runnel_event_age_seconds",
            &label(&s.name),
            &s.event_age_seconds,
        );
    }
    family(
        &mut out,
        "runnel_process_freezes_total",
        "counter",
        "Times this process was frozen (stopped, paused or starved) for over 2 s; outputs waited after each.",
    );
    let _ = writeln!(
        out,
        "runnel_process_freezes_total {}",
        crate::runner::freeze::freezes()
    );
    out
}
