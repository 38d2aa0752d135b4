//! Runs batches through a function, surviving its traps.
//!
//! A trap (panic, deadline, memory limit, stack overflow, malformed result) is
//! a bug in the function, not in the record: the instance is dropped, a fresh
//! one is instantiated from the module's `InstancePre` (microseconds), and the
//! batch is retried one record at a time to find the record that kills it.
//! That record fails with the trap's message; the others get their results.

use std::sync::Arc;

use runnel_abi::{BatchBuilder, BatchRef, RecordRef, Span};

use super::bindings::{Batch, Failure};
use super::instance::{CallError, HumanBytes, Instance, RawResult};
use super::{Limits, Module};
use crate::state::{State, Write};

/// What happened to one input record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A filter kept it: it goes to the output as it is.
    Keep,
    /// A filter dropped it, or a map turned it into nothing.
    Drop,
    /// It produced `count` records of [`Processed::outputs`], from `first` on.
    Emit { first: u32, count: u32 },
    /// It failed: an error the function returned for it, or a trap it caused.
    Failed { message: String, trapped: bool },
}

/// The result of one batch: an outcome per input record, and the output records.
#[derive(Debug, Default)]
pub struct Processed {
    pub outcomes: Vec<Outcome>,
    /// Output frames of maps and scorers (partition and offset are -1).
    pub outputs: BatchBuilder,
    /// Where each output lies in `outputs`, from the one decode that checked
    /// it: [`Processed::outputs_of`] views them without decoding again.
    pub spans: Vec<Span>,
    /// A processor's state writes, as applied to its stores, in order, each
    /// with the record that made it: what its changelog is told.
    pub writes: Vec<Write>,
}

impl Processed {
    /// The records that input `i` produced (empty unless its outcome is `Emit`).
    pub fn outputs_of(&self, i: usize) -> impl Iterator<Item = RecordRef<'_>> {
        let range = match self.outcomes.get(i) {
            Some(Outcome::Emit { first, count }) => *first as usize..(*first + *count) as usize,
            _ => 0..0,
        };
        let view = BatchRef::new(self.outputs.data(), self.outputs.index());
        // Frames were checked, and their spans kept, when the batch came back.
        range.filter_map(move |j| view.at(*self.spans.get(j)?))
    }
}

/// Counters of one worker, for logs and status.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WorkerStats {
    pub batches: u64,
    pub traps: u64,
    pub instantiations: u64,
}

/// A function with its config and model, and the instance that runs it.
#[derive(Debug)]
pub struct Worker {
    module: Arc<Module>,
    limits: Limits,
    config: Vec<(String, String)>,
    model: Option<Arc<[u8]>>,
    instance: Option<Instance>,
    /// A processor's state: lent to the instance for each call.
    state: Option<State>,
    /// The deployment's output topics, when its outputs are routed (see
    /// [`Worker::with_routes`]).
    routes: Option<Arc<[String]>>,
    stats: WorkerStats,
}

impl Worker {
    /// Instantiates the function and calls its `init`, so that a config the
    /// function refuses is an error now, not at the first batch.
    pub fn new(
        module: Arc<Module>,
        limits: Limits,
        config: Vec<(String, String)>,
        model: Option<Arc<[u8]>>,
    ) -> Result<Self, CallError> {
        let mut worker = Self {
            module,
            limits,
            config,
            model,
            instance: None,
            state: None,
            routes: None,
            stats: WorkerStats::default(),
        };
        worker.instance()?;
        Ok(worker)
    }

    /// Gives a processor its state. Each call's writes are applied when the
    /// call succeeds and dropped when it traps (see [`crate::state`]).
    pub fn with_state(mut self, state: State) -> Self {
        self.state = Some(state);
        self
    }

    /// Checks each output's choice of topic (the header
    /// [`OUTPUT_HEADER`]: a name of `outputs`, or an index into them): a
    /// record with an output that picks none of them fails as a whole,
    /// none of its outputs produced and none of its state writes kept.
    pub fn with_routes(mut self, outputs: Arc<[String]>) -> Self {
        self.routes = Some(outputs);
        self
    }

    /// The processor's state, between calls.
    pub fn state(&self) -> Option<&State> {
        self.state.as_ref()
    }

    /// The processor's state, between calls (a restore).
    pub fn state_mut(&mut self) -> Option<&mut State> {
        self.state.as_mut()
    }

    /// Takes the processor's state back, for the next worker (a swap keeps
    /// the state).
    pub fn take_state(&mut self) -> Option<State> {
        self.state.take()
    }

    pub fn module(&self) -> &Arc<Module> {
        &self.module
    }

    pub fn stats(&self) -> WorkerStats {
        self.stats
    }

    /// The linear memory of the current instance, in bytes (0 if none).
    pub fn memory_bytes(&self) -> u64 {
        self.instance.as_ref().map_or(0, Instance::memory_bytes)
    }

    fn instance(&mut self) -> Result<&mut Instance, CallError> {
        if self.instance.is_none() {
            let mut instance = self.module.instantiate(self.limits)?;
            instance.init(&self.config, self.model.as_deref())?;
            self.stats.instantiations += 1;
            self.instance = Some(instance);
        }
        Ok(self.instance.as_mut().expect("set above"))
    }

    /// Runs `batch` through the function. The batch's buffers are lent to the
    /// call and given back unchanged.
    ///
    /// Errs only when no instance can be made to run (instantiation fails or
    /// `init` refuses or traps); traps during the batch are handled here.
    pub fn process(&mut self, batch: &mut BatchBuilder) -> Result<Processed, CallError> {
        self.process_until(batch, &|_| false)
    }

    /// [`Worker::process`], giving up between calls once `give_up` says
    /// so: after a trap, each record of the batch runs alone, each up to
    /// the deadline, so a batch of records that all trap at the deadline
    /// costs `batch_size + 1` deadlines. `give_up` (the partition was
    /// revoked, the deployment stops) is asked before each of those calls,
    /// with the number of records isolated so far; the outcomes then cover
    /// only the records run, a prefix of the batch.
    pub fn process_until(
        &mut self,
        batch: &mut BatchBuilder,
        give_up: &dyn Fn(usize) -> bool,
    ) -> Result<Processed, CallError> {
        self.stats.batches += 1;
        match self.call(batch)? {
            Ok(processed) => Ok(processed),
            Err(trap) if batch.len() <= 1 => Ok(Processed {
                outcomes: vec![failed(&trap)],
                ..Processed::default()
            }),
            Err(CallError::Unroutable { .. }) => {
                tracing::debug!(
                    function = self.module.name(),
                    records = batch.len(),
                    "an output picks no output topic; running the batch one record at a time, so that the other records' state does not depend on the failed one's"
                );
                self.isolate(batch, give_up)
            }
            Err(trap) => {
                tracing::warn!(function = self.module.name(), error = %trap, records = batch.len(),
                    "the function trapped; retrying the batch one record at a time");
                self.isolate(batch, give_up)
            }
        }
    }

    /// One call on a live instance: `Err` for a fatal error, `Ok(Err)` for a trap.
    fn call(
        &mut self,
        batch: &mut BatchBuilder,
    ) -> Result<Result<Processed, CallError>, CallError> {
        let n = batch.len();
        let function = self.module.name.clone();
        self.instance()?;
        let instance = self.instance.as_mut().expect("made above");
        if let Some(mut state) = self.state.take() {
            let view = BatchRef::new(batch.data(), batch.index());
            state.begin(
                view.iter()
                    .map(|r| r.map_or((-1, -1), |r| (r.partition(), r.offset()))),
            );
            instance.lend_state(state);
        }
        let (data, index) = batch.parts_mut();
        let wit = Batch {
            data: std::mem::take(data),
            index: std::mem::take(index),
        };
        let result = instance.call(&wit);
        *data = wit.data;
        *index = wit.index;
        self.state = instance.take_state();
        let mut checked = result.and_then(|raw| {
            check(raw, n, &self.limits).map_err(|reason| CallError::BadOutput {
                function: function.clone(),
                reason,
            })
        });
        if let Err(e) = &checked {
            debug_assert!(e.is_trap());
            self.stats.traps += 1;
            self.instance = None;
            if let Some(state) = &mut self.state {
                state.abort();
            }
        } else if let (Ok(p), Some(routes)) = (&mut checked, &self.routes) {
            let unroutable = unroutable(p, routes);
            if !unroutable.is_empty() {
                if let Some(state) = &mut self.state {
                    // Its writes are dropped, and a later record of the
                    // batch may have read them: each record runs alone.
                    state.abort();
                    if n > 1 {
                        return Ok(Err(CallError::Unroutable { function }));
                    }
                }
                for (i, message) in unroutable {
                    p.outcomes[i] = Outcome::Failed {
                        message: cut_message(message),
                        trapped: false,
                    };
                }
            }
        }
        if checked.is_ok()
            && let Some(state) = &mut self.state
        {
            // Not the function's fault: the batch is not done, and the
            // caller retries or stops as for a failed instantiation.
            let writes = state.commit().map_err(|e| CallError::State {
                function,
                reason: e.to_string(),
            })?;
            if let Ok(p) = &mut checked {
                p.writes = writes;
            }
        }
        Ok(checked)
    }

    fn isolate(
        &mut self,
        batch: &BatchBuilder,
        give_up: &dyn Fn(usize) -> bool,
    ) -> Result<Processed, CallError> {
        let view = BatchRef::new(batch.data(), batch.index());
        let mut out = Processed {
            outcomes: Vec::with_capacity(batch.len()),
            ..Processed::default()
        };
        let mut single = BatchBuilder::default();
        for i in 0..batch.len() {
            if give_up(i) {
                tracing::info!(
                    function = self.module.name(),
                    run = i,
                    records = batch.len(),
                    "giving up the rest of an isolated batch: its partition was revoked or the deployment stops"
                );
                break;
            }
            let record = match view.get(i) {
                Ok(r) => r,
                Err(e) => {
                    out.outcomes.push(Outcome::Failed {
                        message: e.to_string(),
                        trapped: false,
                    });
                    continue;
                }
            };
            single.clear();
            let headers: Vec<_> = record.headers().map_while(Result::ok).collect();
            single.push(&record.to_frame(&headers));
            match self.call(&mut single)? {
                Err(trap) => {
                    tracing::warn!(function = self.module.name(), partition = record.partition(),
                        offset = record.offset(), error = %trap, "record isolated: it makes the function trap");
                    out.outcomes.push(failed(&trap));
                }
                Ok(p) => {
                    out.writes.extend(p.writes);
                    let outcome = match p.outcomes.into_iter().next() {
                        Some(Outcome::Emit { count, .. }) => {
                            let first = out.outputs.len() as u32;
                            let produced = BatchRef::new(p.outputs.data(), p.outputs.index());
                            for frame in p.spans.iter().filter_map(|s| produced.at(*s)) {
                                let headers: Vec<_> =
                                    frame.headers().map_while(Result::ok).collect();
                                let start = out.outputs.data().len() as u32;
                                out.outputs.push(&frame.to_frame(&headers));
                                out.spans.push(frame.span(start));
                            }
                            Outcome::Emit { first, count }
                        }
                        Some(other) => other,
                        None => unreachable!("check() ensures one outcome per record"),
                    };
                    out.outcomes.push(outcome);
                }
            }
        }
        Ok(out)
    }
}

/// The header an output record picks its topic with: a name of the
/// deployment's outputs, or an index into them (`0` is the first, the
/// default). The host reads it and does not produce it.
pub const OUTPUT_HEADER: &str = "runnel-output";

/// The output `choice` (a [`OUTPUT_HEADER`] value) picks among `outputs`.
pub fn pick_output(outputs: &[String], choice: &[u8]) -> Option<usize> {
    let choice = std::str::from_utf8(choice).ok()?;
    if let Some(i) = outputs.iter().position(|t| t == choice) {
        return Some(i);
    }
    if choice.is_empty() || !choice.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    choice.parse::<usize>().ok().filter(|&i| i < outputs.len())
}

/// The records whose outputs pick a topic that is not one of `outputs`,
/// with why.
fn unroutable(p: &Processed, outputs: &[String]) -> Vec<(usize, String)> {
    let mut bad = Vec::new();
    for i in 0..p.outcomes.len() {
        for (j, frame) in p.outputs_of(i).enumerate() {
            let choice = frame
                .headers()
                .map_while(Result::ok)
                .find(|(k, _)| *k == OUTPUT_HEADER)
                .map(|(_, v)| v.unwrap_or_default());
            if let Some(choice) = choice
                && pick_output(outputs, choice).is_none()
            {
                bad.push((
                    i,
                    format!(
                        "output {j} of the record picks {:?} ({OUTPUT_HEADER}), which is not one of \
                         this deployment's outputs: {} (a name, or an index from 0 to {}); \
                         none of its outputs was produced",
                        String::from_utf8_lossy(choice),
                        outputs.join(", "),
                        outputs.len().saturating_sub(1)
                    ),
                ));
                break;
            }
        }
    }
    bad
}

fn failed(trap: &CallError) -> Outcome {
    Outcome::Failed {
        // It quotes the guest's last lines of stderr.
        message: cut_message(trap.to_string()),
        trapped: true,
    }
}

/// The longest failure message kept, in bytes: it travels in a Kafka header
/// of the dead letter. A longer one is cut, and says how much was cut. The
/// same holds for a trap's message and for the error `init` returns.
pub const MAX_FAILURE_MESSAGE: usize = 1024;

/// Turns what the guest returned into outcomes, refusing anything that does
/// not add up: a verdict or count per input record, no more outputs per
/// record nor bytes per call than the limits allow, failures in order and in
/// range, and output frames well formed, in order and not overlapping (so
/// that the host emits no more bytes than the guest returned: frames that
/// alias one another would multiply them).
fn check(raw: RawResult, n: usize, limits: &Limits) -> Result<Processed, String> {
    match raw {
        RawResult::Filter(v) => {
            if v.keep.len() != n {
                return Err(format!(
                    "{} verdicts for a batch of {n} records",
                    v.keep.len()
                ));
            }
            let mut outcomes: Vec<Outcome> = v
                .keep
                .iter()
                .map(|&k| if k == 0 { Outcome::Drop } else { Outcome::Keep })
                .collect();
            apply_failures(&mut outcomes, v.failures)?;
            Ok(Processed {
                outcomes,
                ..Processed::default()
            })
        }
        RawResult::Outputs(o) => {
            if o.counts.len() != n {
                return Err(format!(
                    "{} output counts for a batch of {n} records",
                    o.counts.len()
                ));
            }
            let bytes = o.records.data.len() as u64;
            if bytes > limits.max_output_bytes {
                return Err(format!(
                    "its outputs take {} ({bytes} bytes), over the limit of {} per call",
                    HumanBytes(bytes),
                    HumanBytes(limits.max_output_bytes)
                ));
            }
            let frames = o.records.index.len();
            let mut next: u64 = 0;
            let mut outcomes = Vec::with_capacity(n);
            for (i, &count) in o.counts.iter().enumerate() {
                if count > limits.max_outputs_per_record {
                    return Err(format!(
                        "record {i} produced {count} outputs, over the limit of {} per record",
                        limits.max_outputs_per_record
                    ));
                }
                outcomes.push(if count == 0 {
                    Outcome::Drop
                } else {
                    let first = next as u32;
                    next += u64::from(count);
                    Outcome::Emit { first, count }
                });
            }
            if next != frames as u64 {
                return Err(format!(
                    "the counts add up to {next} output records but {frames} were returned"
                ));
            }
            let spans = check_frames(&o.records.data, &o.records.index)?;
            for f in &o.failures {
                if o.counts.get(f.index as usize).is_some_and(|&c| c != 0) {
                    return Err(format!(
                        "record {} both failed and produced outputs",
                        f.index
                    ));
                }
            }
            apply_failures(&mut outcomes, o.failures)?;
            Ok(Processed {
                outcomes,
                outputs: BatchBuilder::from_parts(o.records.data, o.records.index),
                spans,
                writes: Vec::new(),
            })
        }
    }
}

/// Every frame decodes, starts at or after the end of the one before, and
/// ends within the data: the frames' bytes add up to at most the data's.
/// Returns where each lies, so that the host produces them without decoding
/// them again.
///
/// This runs for every output of every call. `BatchRef::iter` decodes inline
/// here, where only the lengths are read; `BatchRef::get`, a call into
/// another crate, returned each whole record through memory and made this
/// check 15% of an identity map's call.
fn check_frames(data: &[u8], index: &[u32]) -> Result<Vec<Span>, String> {
    let view = BatchRef::new(data, index);
    let mut end = 0usize;
    let mut spans = Vec::with_capacity(index.len());
    for (i, (record, &start)) in view.iter().zip(index).enumerate() {
        let start = start as usize;
        if start < end {
            return Err(format!(
                "output frame {i} starts at byte {start}, before the end of frame {} at byte \
                 {end}: frames must be in order and must not overlap",
                i - 1
            ));
        }
        let record = record.map_err(|e| format!("output {e}"))?;
        end = start + record.frame_len();
        spans.push(record.span(start as u32));
    }
    Ok(spans)
}

fn apply_failures(outcomes: &mut [Outcome], failures: Vec<Failure>) -> Result<(), String> {
    let n = outcomes.len();
    let mut after: Option<u32> = None;
    for f in failures {
        if after.is_some_and(|a| f.index <= a) {
            return Err(format!(
                "a failure names record {} after record {}: failures must be in batch order, \
                 one per record",
                f.index,
                after.unwrap_or_default()
            ));
        }
        after = Some(f.index);
        let slot = outcomes
            .get_mut(f.index as usize)
            .ok_or_else(|| format!("a failure names record {} of a batch of {n}", f.index))?;
        *slot = Outcome::Failed {
            message: cut_message(f.error.message),
            trapped: false,
        };
    }
    Ok(())
}

/// `message`, cut to [`MAX_FAILURE_MESSAGE`] bytes (at a character boundary)
/// with a note of how much was cut.
pub(crate) fn cut_message(mut message: String) -> String {
    if message.len() <= MAX_FAILURE_MESSAGE {
        return message;
    }
    let total = message.len();
    let mut end = MAX_FAILURE_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str(&format!(" [{} more bytes cut]", total - end));
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::bindings::Outputs;
    use crate::engine::bindings::filter::runnel::stream::types::RecordError;
    use runnel_abi::Frame;

    fn frame(value: &[u8]) -> BatchBuilder {
        let mut b = BatchBuilder::default();
        b.push(&Frame {
            partition: -1,
            offset: -1,
            timestamp_ms: None,
            key: None,
            value: Some(value),
            headers: &[],
        });
        b
    }

    fn outputs(counts: Vec<u32>, data: Vec<u8>, index: Vec<u32>) -> RawResult {
        RawResult::Outputs(Outputs {
            counts,
            records: Batch { data, index },
            failures: vec![],
        })
    }

    #[test]
    fn frames_that_alias_one_another_are_refused() {
        let (data, _) = frame(&[7; 1000]).into_parts();
        let err = check(outputs(vec![3], data, vec![0, 0, 0]), 1, &Limits::default()).unwrap_err();
        assert_eq!(
            err,
            "output frame 1 starts at byte 0, before the end of frame 0 at byte 1032: frames \
             must be in order and must not overlap"
        );
    }

    #[test]
    fn frames_out_of_order_or_overlapping_are_refused() {
        let mut b = frame(b"first");
        b.push(&Frame {
            partition: -1,
            offset: -1,
            timestamp_ms: None,
            key: None,
            value: Some(b"second"),
            headers: &[],
        });
        let (data, index) = b.into_parts();
        let ok = check(
            outputs(vec![2], data.clone(), index.clone()),
            1,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(ok.outcomes, vec![Outcome::Emit { first: 0, count: 2 }]);
        let swapped = vec![index[1], index[0]];
        assert!(
            check(
                outputs(vec![2], data.clone(), swapped),
                1,
                &Limits::default()
            )
            .unwrap_err()
            .contains("must be in order")
        );
        // The second frame starting one byte early reads into the first.
        let overlapping = vec![index[0], index[1] - 1];
        assert!(check(outputs(vec![2], data, overlapping), 1, &Limits::default()).is_err());
    }

    #[test]
    fn outputs_per_record_and_bytes_per_call_are_limited() {
        let limits = Limits {
            max_outputs_per_record: 2,
            max_output_bytes: 100,
            ..Limits::default()
        };
        let err = check(outputs(vec![3], vec![], vec![0, 0, 0]), 1, &limits).unwrap_err();
        assert_eq!(
            err,
            "record 0 produced 3 outputs, over the limit of 2 per record"
        );
        let (data, index) = frame(&[1; 200]).into_parts();
        let err = check(outputs(vec![1], data, index), 1, &limits).unwrap_err();
        assert_eq!(
            err,
            "its outputs take 232 B (232 bytes), over the limit of 100 B per call"
        );
    }

    #[test]
    fn failures_are_in_order_and_messages_are_cut() {
        let fail = |index: u32, message: String| Failure {
            index,
            error: RecordError { message },
        };
        let mut outcomes = vec![Outcome::Keep; 3];
        let long = "é".repeat(MAX_FAILURE_MESSAGE);
        apply_failures(&mut outcomes, vec![fail(0, "short".into()), fail(2, long)]).unwrap();
        assert_eq!(
            outcomes[0],
            Outcome::Failed {
                message: "short".into(),
                trapped: false
            }
        );
        let Outcome::Failed { message, .. } = &outcomes[2] else {
            panic!("{:?}", outcomes[2]);
        };
        assert!(
            message.len() < MAX_FAILURE_MESSAGE + 40,
            "{}",
            message.len()
        );
        assert!(message.ends_with(" [1024 more bytes cut]"), "{message}");
        let err = apply_failures(
            &mut outcomes,
            vec![fail(1, "a".into()), fail(1, "b".into())],
        )
        .unwrap_err();
        assert!(err.contains("failures must be in batch order"), "{err}");
    }

    mod properties {
        use proptest::prelude::*;
        use runnel_abi::BatchRef;

        use super::*;

        /// Bytes that are sometimes well-formed frames, sometimes not.
        fn data() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..5)
                    .prop_map(|values| {
                        let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
                        BatchBuilder::of_values(refs).into_parts().0
                    }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            /// The frame decoder takes any bytes and any index: every record
            /// and every field of it either decodes or is an error.
            #[test]
            fn the_frame_decoder_takes_any_bytes(
                data in data(),
                index in proptest::collection::vec(any::<u32>(), 0..8),
                small in proptest::collection::vec(0u32..300, 0..8),
            ) {
                for index in [&index, &small] {
                    let view = BatchRef::new(&data, index);
                    for record in view.iter().flatten() {
                        let _ = (record.partition(), record.offset(), record.timestamp_ms());
                        let _ = (record.key(), record.value(), record.frame_len());
                        let n = record.headers().take(100).count();
                        prop_assert!(n <= record.header_count().max(n));
                    }
                }
            }

            /// Whatever a guest returns, the host either refuses it or takes
            /// no more output bytes than the guest returned, with one
            /// outcome per input record and every output in range.
            #[test]
            fn what_a_guest_returns_is_refused_or_bounded(
                n in 1usize..6,
                counts in proptest::collection::vec(0u32..4, 0..7),
                data in data(),
                index in proptest::collection::vec(0u32..300, 0..8),
                failures in proptest::collection::vec((0u32..8, ".{0,20}"), 0..3),
                filter in any::<bool>(),
            ) {
                let failures: Vec<Failure> = failures
                    .into_iter()
                    .map(|(index, message)| Failure { index, error: RecordError { message } })
                    .collect();
                let raw = if filter {
                    RawResult::Filter(crate::engine::bindings::Verdicts {
                        keep: counts.iter().map(|&c| c.min(1) as u8).collect(),
                        failures,
                    })
                } else {
                    RawResult::Outputs(Outputs { counts, records: Batch { data: data.clone(), index }, failures })
                };
                if let Ok(p) = check(raw, n, &Limits::default()) {
                    prop_assert_eq!(p.outcomes.len(), n);
                    let returned: usize = (0..n)
                        .flat_map(|i| p.outputs_of(i).map(|r| r.frame_len()).collect::<Vec<_>>())
                        .sum();
                    prop_assert!(returned <= data.len());
                    for o in &p.outcomes {
                        if let Outcome::Emit { first, count } = o {
                            prop_assert!((*first + *count) as usize <= p.outputs.len());
                        }
                    }
                }
            }
        }
    }
}
