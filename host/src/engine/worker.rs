//! Runs batches through a function, surviving its traps.
//!
//! A trap (panic, deadline, memory limit, stack overflow, malformed result) is
//! a bug in the function, not in the record: the instance is dropped, a fresh
//! one is instantiated from the module's `InstancePre` (microseconds), and the
//! batch is retried one record at a time to find the record that kills it.
//! That record fails with the trap's message; the others get their results.

use std::sync::Arc;

use runnel_abi::{BatchBuilder, BatchRef, RecordRef};

use super::bindings::{Batch, Failure};
use super::instance::{CallError, Instance, RawResult};
use super::{Limits, Module};

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
}

impl Processed {
    /// The records that input `i` produced (empty unless its outcome is `Emit`).
    pub fn outputs_of(&self, i: usize) -> impl Iterator<Item = RecordRef<'_>> {
        let range = match self.outcomes.get(i) {
            Some(Outcome::Emit { first, count }) => *first as usize..(*first + *count) as usize,
            _ => 0..0,
        };
        let view = BatchRef::new(self.outputs.data(), self.outputs.index());
        // Frames were validated when the batch came back.
        range.filter_map(move |j| view.get(j).ok())
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
            stats: WorkerStats::default(),
        };
        worker.instance()?;
        Ok(worker)
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
        self.stats.batches += 1;
        match self.call(batch)? {
            Ok(processed) => Ok(processed),
            Err(trap) if batch.len() <= 1 => Ok(Processed {
                outcomes: vec![failed(&trap)],
                outputs: BatchBuilder::default(),
            }),
            Err(trap) => {
                tracing::warn!(function = self.module.name(), error = %trap, records = batch.len(),
                    "the function trapped; retrying the batch one record at a time");
                self.isolate(batch)
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
        let instance = self.instance()?;
        let (data, index) = batch.parts_mut();
        let wit = Batch {
            data: std::mem::take(data),
            index: std::mem::take(index),
        };
        let result = instance.call(&wit);
        *data = wit.data;
        *index = wit.index;
        let checked = result.and_then(|raw| {
            check(raw, n).map_err(|reason| CallError::BadOutput { function, reason })
        });
        if let Err(e) = &checked {
            debug_assert!(e.is_trap());
            self.stats.traps += 1;
            self.instance = None;
        }
        Ok(checked)
    }

    fn isolate(&mut self, batch: &BatchBuilder) -> Result<Processed, CallError> {
        let view = BatchRef::new(batch.data(), batch.index());
        let mut out = Processed {
            outcomes: Vec::with_capacity(batch.len()),
            outputs: BatchBuilder::default(),
        };
        let mut single = BatchBuilder::default();
        for i in 0..batch.len() {
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
                    let outcome = match p.outcomes.into_iter().next() {
                        Some(Outcome::Emit { count, .. }) => {
                            let first = out.outputs.len() as u32;
                            let produced = BatchRef::new(p.outputs.data(), p.outputs.index());
                            for frame in produced.iter().flatten() {
                                let headers: Vec<_> =
                                    frame.headers().map_while(Result::ok).collect();
                                out.outputs.push(&frame.to_frame(&headers));
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

fn failed(trap: &CallError) -> Outcome {
    Outcome::Failed {
        message: trap.to_string(),
        trapped: true,
    }
}

/// Turns what the guest returned into outcomes, refusing anything that does
/// not add up: a verdict or count per input record, failures in order and in
/// range, and every output frame well formed.
fn check(raw: RawResult, n: usize) -> Result<Processed, String> {
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
                outputs: BatchBuilder::default(),
            })
        }
        RawResult::Outputs(o) => {
            if o.counts.len() != n {
                return Err(format!(
                    "{} output counts for a batch of {n} records",
                    o.counts.len()
                ));
            }
            let frames = o.records.index.len();
            let view = BatchRef::new(&o.records.data, &o.records.index);
            if let Some(Err(e)) = view.iter().find(Result::is_err) {
                return Err(format!("output {e}"));
            }
            let mut next: u64 = 0;
            let mut outcomes = Vec::with_capacity(n);
            for &count in &o.counts {
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
            })
        }
    }
}

fn apply_failures(outcomes: &mut [Outcome], failures: Vec<Failure>) -> Result<(), String> {
    let n = outcomes.len();
    for f in failures {
        let slot = outcomes
            .get_mut(f.index as usize)
            .ok_or_else(|| format!("a failure names record {} of a batch of {n}", f.index))?;
        *slot = Outcome::Failed {
            message: f.error.message,
            trapped: false,
        };
    }
    Ok(())
}
