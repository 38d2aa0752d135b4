//! `runnel produce` and `runnel consume`: records in and out of a topic, in
//! the same JSON-lines form as `runnel run`, so a pipeline can be fed and
//! watched without another Kafka client.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use runnel_abi::{BatchBuilder, BatchRef};

use super::run::{Format, output_json, parse_line};
use crate::kafka::headers::raw as raw_headers;
use crate::kafka::{KafkaOptions, push_message};

#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    /// Bootstrap address of the Kafka cluster, `HOST:PORT`.
    #[arg(long, env = "RUNNEL_BROKERS")]
    pub brokers: String,
    /// The topic to write to.
    #[arg(long)]
    pub topic: String,
    /// Where to read records from; `-` is stdin.
    #[arg(long, value_name = "FILE|-", default_value = "-")]
    pub input: String,
    /// How input lines are read (as in `runnel run`).
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    pub format: Format,
}

#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    /// Bootstrap address of the Kafka cluster, `HOST:PORT`.
    #[arg(long, env = "RUNNEL_BROKERS")]
    pub brokers: String,
    /// The topic to read, from the beginning.
    #[arg(long)]
    pub topic: String,
    /// Stop after this many records.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop when no record arrived for this many seconds.
    #[arg(long, default_value_t = 5.0)]
    pub idle_secs: f64,
}

pub fn produce(args: &ProduceArgs) -> anyhow::Result<u64> {
    let kafka = KafkaOptions::new(&args.brokers);
    let producer: ThreadedProducer<DefaultProducerContext> = kafka
        .producer()
        .create()
        .context("cannot create a producer")?;
    let reader: Box<dyn BufRead> = if args.input == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&args.input)
                .with_context(|| format!("cannot read {}", args.input))?,
        ))
    };
    let mut sent = 0u64;
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read line {}", i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let input = parse_line(args.format, i + 1, &line)
            .map_err(|e| anyhow::anyhow!("line {}: {e}", i + 1))?;
        let mut headers = OwnedHeaders::new_with_capacity(input.headers.len());
        for (k, v) in &input.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&args.topic).headers(headers);
        if let Some(k) = input.key.as_deref() {
            record = record.key(k);
        }
        if let Some(v) = input.value.as_deref() {
            record = record.payload(v);
        }
        if let Some(ts) = input.timestamp_ms {
            record = record.timestamp(ts);
        }
        while let Err((e, back)) = producer.send(record) {
            if !matches!(
                e,
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull
                )
            ) {
                anyhow::bail!("cannot produce line {}: {e}", i + 1);
            }
            record = back;
            std::thread::sleep(Duration::from_millis(5));
        }
        sent += 1;
    }
    producer
        .flush(Duration::from_secs(60))
        .context("not every record was acknowledged within 60 s")?;
    Ok(sent)
}

pub fn consume(args: &ConsumeArgs, out: &mut dyn Write) -> anyhow::Result<u64> {
    let kafka = KafkaOptions::new(&args.brokers);
    let group = format!("runnel-consume-{}", std::process::id());
    let consumer: BaseConsumer = kafka
        .consumer(&group)
        .set("enable.auto.commit", "false")
        .create()
        .context("cannot create a consumer")?;
    consumer
        .subscribe(&[&args.topic])
        .context("cannot subscribe")?;
    let idle = Duration::from_secs_f64(args.idle_secs);
    let mut last = Instant::now();
    let mut n = 0u64;
    let mut frame = BatchBuilder::default();
    while args.count.is_none_or(|c| n < c) && last.elapsed() < idle {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.with_context(|| format!("cannot read {}", args.topic))?;
        last = Instant::now();
        frame.clear();
        if push_message(&mut frame, &m).is_err() {
            // A header name that is not UTF-8: shown with invalid bytes replaced.
            let names: Vec<(String, Option<&[u8]>)> = m
                .headers()
                .map(|h| {
                    raw_headers(h)
                        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v))
                        .collect()
                })
                .unwrap_or_default();
            let headers: Vec<(&str, Option<&[u8]>)> =
                names.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            frame.push(&runnel_abi::Frame {
                partition: m.partition(),
                offset: m.offset(),
                timestamp_ms: m.timestamp().to_millis(),
                key: m.key(),
                value: m.payload(),
                headers: &headers,
            });
        }
        let record = BatchRef::new(frame.data(), frame.index()).get(0)?;
        let mut line = output_json(0, &record);
        if let Some(o) = line.as_object_mut() {
            o.shift_remove("line");
            o.insert("partition".into(), m.partition().into());
            o.insert("offset".into(), m.offset().into());
        }
        writeln!(out, "{line}")?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}
