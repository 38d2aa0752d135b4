//! `runnel topic create|ls|delete`, `runnel produce` and `runnel consume`:
//! topics and records on any Kafka cluster, without another Kafka client.
//! Records are in the same JSON-lines form as `runnel run`, so a pipeline can
//! be fed and watched from the shell.

use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use runnel_abi::{BatchBuilder, BatchRef};

use super::run::{Format, output_json, parse_line};
use crate::kafka::{KafkaOptions, push_message_lossy};

/// How long an admin request or a metadata read may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Which cluster, and how to reach it.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Bootstrap address of the Kafka cluster, `HOST:PORT`.
    #[arg(long, env = "RUNNEL_BROKERS")]
    pub brokers: String,
    /// A librdkafka property (TLS, SASL, tuning), as for `runnel serve`; repeat for more.
    #[arg(long = "kafka", value_name = "KEY=VALUE", value_parser = super::run::parse_key_value)]
    pub kafka: Vec<(String, String)>,
}

impl ClusterArgs {
    pub fn options(&self) -> KafkaOptions {
        KafkaOptions {
            brokers: self.brokers.clone(),
            properties: self.kafka.clone(),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
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
    #[command(flatten)]
    pub cluster: ClusterArgs,
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

/// `runnel topic ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create(CreateArgs),
    /// List the topics with their partitions and end offsets.
    Ls {
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Delete a topic and its records.
    Delete {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// The topic to delete.
        name: String,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The topic's name.
    pub name: String,
    /// Its number of partitions (as `runnel dev` makes them).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,
    /// Copies of each partition; default: the cluster's default.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    pub replication: Option<i32>,
    /// A topic config entry, for instance `retention.ms=86400000` or
    /// `cleanup.policy=compact`; repeat for more.
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = super::run::parse_key_value)]
    pub config: Vec<(String, String)>,
}

/// Runs one topic command; what it prints goes to `out`.
pub async fn topic(command: &TopicCommand, out: &mut String) -> anyhow::Result<()> {
    match command {
        TopicCommand::Create(a) => {
            let kafka = a.cluster.options();
            let admin = kafka.admin()?;
            // -1: the cluster's default replication factor (KIP-464).
            let replication = TopicReplication::Fixed(a.replication.unwrap_or(-1));
            let new = a.config.iter().fold(
                NewTopic::new(&a.name, a.partitions, replication),
                |n, (k, v)| n.set(k, v),
            );
            let results = admin
                .create_topics([&new], &admin_options())
                .await
                .with_context(|| {
                    format!("cannot create topic {:?} on {}", a.name, kafka.brokers)
                })?;
            for r in results {
                if let Err((name, code)) = r {
                    anyhow::bail!("cannot create topic {name:?} on {}: {code}", kafka.brokers);
                }
            }
            let _ = writeln!(
                out,
                "created topic {} ({} partitions)",
                a.name, a.partitions
            );
        }
        TopicCommand::Delete { cluster, name } => {
            let kafka = cluster.options();
            let admin = kafka.admin()?;
            let results = admin
                .delete_topics(&[name.as_str()], &admin_options())
                .await
                .with_context(|| format!("cannot delete topic {name:?} on {}", kafka.brokers))?;
            for r in results {
                if let Err((name, code)) = r {
                    anyhow::bail!("cannot delete topic {name:?} on {}: {code}", kafka.brokers);
                }
            }
            let _ = writeln!(out, "deleted topic {name}");
        }
        TopicCommand::Ls { cluster } => {
            let kafka = cluster.options();
            let topics = tokio::task::spawn_blocking(move || list(&kafka))
                .await
                .context("listing the topics")??;
            out.push_str(&ls_table(&topics));
        }
    }
    Ok(())
}

fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(ADMIN_TIMEOUT))
}

/// A topic as `runnel topic ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    /// The end offset (high watermark) of each partition, in partition order.
    pub end_offsets: Vec<i64>,
}

/// The cluster's topics, by name, with the end offset of each partition.
pub fn list(kafka: &KafkaOptions) -> anyhow::Result<Vec<TopicInfo>> {
    let consumer: BaseConsumer = kafka
        .consumer("runnel-topic-ls")
        .create()
        .context("cannot create a Kafka client")?;
    let md = consumer
        .fetch_metadata(None, ADMIN_TIMEOUT)
        .with_context(|| format!("cannot read the topics of {}", kafka.brokers))?;
    let mut topics = Vec::new();
    for t in md.topics() {
        if let Some(e) = t.error() {
            anyhow::bail!(
                "cannot read topic {:?} on {}: {}",
                t.name(),
                kafka.brokers,
                rdkafka::types::RDKafkaErrorCode::from(e)
            );
        }
        let mut partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        partitions.sort_unstable();
        let mut end_offsets = Vec::with_capacity(partitions.len());
        for p in partitions {
            let (_, high) = consumer
                .fetch_watermarks(t.name(), p, ADMIN_TIMEOUT)
                .with_context(|| {
                    format!(
                        "cannot read the end offset of {}/{p} on {}",
                        t.name(),
                        kafka.brokers
                    )
                })?;
            end_offsets.push(high);
        }
        topics.push(TopicInfo {
            name: t.name().to_owned(),
            end_offsets,
        });
    }
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(topics)
}

fn ls_table(topics: &[TopicInfo]) -> String {
    if topics.is_empty() {
        return "no topics\n".to_owned();
    }
    let width = topics
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(0)
        .max(5);
    let mut out = format!("{:<width$}  PARTITIONS  END OFFSETS\n", "TOPIC");
    for t in topics {
        let ends: Vec<String> = t.end_offsets.iter().map(i64::to_string).collect();
        let _ = writeln!(
            out,
            "{:<width$}  {:<10}  {}",
            t.name,
            t.end_offsets.len(),
            ends.join(" ")
        );
    }
    out
}

pub fn produce(args: &ProduceArgs) -> anyhow::Result<u64> {
    let kafka = args.cluster.options();
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
    let kafka = args.cluster.options();
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
        // Shown, not run: a header name that is not UTF-8 is shown lossily.
        push_message_lossy(&mut frame, &m);
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
