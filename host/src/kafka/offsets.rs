//! Where a deployment's consumer group starts reading: the positions that
//! `runnel deploy --from` and `runnel reset --to` name, resolved to an
//! offset per input partition and committed for the group while it has no
//! member (Kafka refuses offset commits for a group with members; the
//! embedded broker accepts them, and the member's next commit would undo
//! the move).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use super::KafkaOptions;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A position in every input partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// The first record each partition still holds.
    Earliest,
    /// The end of each partition: only records written from now on.
    Latest,
    /// This offset in every partition, or its end where it ends before.
    Offset(i64),
    /// The first record written at or after this time (ms since the Unix
    /// epoch), by the broker's record timestamps; the end where there is
    /// none.
    Time(i64),
    /// These offsets in these partitions (of every input topic); the
    /// others stay where they are.
    Partitions(Vec<(i32, i64)>),
}

impl FromStr for Position {
    type Err = String;

    /// `earliest`, `latest`, an offset, an RFC 3339 time
    /// (`2026-12-01T10:00:00Z`), `@<ms since the Unix epoch>`, or
    /// `PARTITION:OFFSET` pairs separated by commas.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || {
            format!(
                "{s:?} is not a position: use earliest, latest, an offset, a time \
                 (2026-12-01T10:00:00Z, or @<ms since 1970>), or PARTITION:OFFSET[,...]"
            )
        };
        match s {
            "earliest" => return Ok(Self::Earliest),
            "latest" => return Ok(Self::Latest),
            "" => return Err(bad()),
            _ => {}
        }
        if let Some(ms) = s.strip_prefix('@') {
            return ms.parse().map(Self::Time).map_err(|_| bad());
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse().map(Self::Offset).map_err(|_| bad());
        }
        let pair = |p: &str| {
            p.trim().split_once(':').is_some_and(|(a, b)| {
                let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
                digits(a.trim()) || digits(b.trim())
            })
        };
        if s.split(',').all(pair) {
            let mut pairs = Vec::new();
            for pair in s.split(',') {
                let (p, o) = pair.trim().split_once(':').ok_or_else(bad)?;
                let p: i32 = p.trim().parse().map_err(|_| bad())?;
                let o: i64 = o.trim().parse().map_err(|_| bad())?;
                if p < 0 || o < 0 || pairs.iter().any(|&(q, _)| q == p) {
                    return Err(bad());
                }
                pairs.push((p, o));
            }
            return Ok(Self::Partitions(pairs));
        }
        let at = humantime::parse_rfc3339_weak(s).map_err(|_| bad())?;
        let ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| bad())?
            .as_millis();
        i64::try_from(ms).map(Self::Time).map_err(|_| bad())
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Earliest => f.write_str("earliest"),
            Self::Latest => f.write_str("latest"),
            Self::Offset(o) => write!(f, "offset {o}"),
            Self::Time(ms) => {
                let at = std::time::UNIX_EPOCH + Duration::from_millis(*ms as u64);
                write!(f, "{}", humantime::format_rfc3339_millis(at))
            }
            Self::Partitions(pairs) => {
                let pairs: Vec<String> = pairs.iter().map(|(p, o)| format!("{p}:{o}")).collect();
                f.write_str(&pairs.join(","))
            }
        }
    }
}

/// One partition moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Moved {
    pub topic: String,
    pub partition: i32,
    /// The group's committed offset before (`None`: it had none).
    pub was: Option<i64>,
    /// Where the group starts now.
    pub now: i64,
}

/// The members of consumer group `group` now (0 when it has none, or does
/// not exist).
pub fn members(kafka: &KafkaOptions, group: &str) -> anyhow::Result<usize> {
    let client: BaseConsumer = kafka
        .consumer(&format!("runnel.admin.{}", uuid::Uuid::new_v4()))
        .create()
        .context("cannot create a client to describe the group")?;
    let list = client
        .fetch_group_list(Some(group), TIMEOUT)
        .with_context(|| format!("cannot describe consumer group {group}"))?;
    Ok(list
        .groups()
        .iter()
        .filter(|g| g.name() == group)
        .map(|g| g.members().len())
        .sum())
}

/// Commits `position` in every partition of `topics` for `group`, which
/// must have no member; returns where each partition was and is now.
pub fn move_group(
    kafka: &KafkaOptions,
    group: &str,
    topics: &[String],
    position: &Position,
) -> anyhow::Result<Vec<Moved>> {
    let consumer: BaseConsumer = kafka
        .consumer(group)
        .set("enable.auto.commit", "false")
        .create()
        .context("cannot create a client of the group")?;
    let mut all = TopicPartitionList::new();
    for topic in topics {
        let md = consumer
            .fetch_metadata(Some(topic), TIMEOUT)
            .with_context(|| format!("cannot read the metadata of {topic}"))?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .with_context(|| format!("topic {topic} does not exist"))?;
        for p in t.partitions() {
            all.add_partition(topic, p.id());
        }
    }
    if let Position::Partitions(pairs) = position
        && let Some((p, _)) = pairs
            .iter()
            .find(|(p, _)| !all.elements().iter().any(|e| e.partition() == *p))
    {
        anyhow::bail!("no input topic of the group has a partition {p}");
    }
    let committed = consumer
        .committed_offsets(all.clone(), TIMEOUT)
        .context("cannot read the group's committed offsets")?;
    let was = |topic: &str, partition: i32| {
        committed
            .find_partition(topic, partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) if o >= 0 => Some(o),
                _ => None,
            })
    };
    let times = match position {
        Position::Time(ms) => {
            let mut asked = TopicPartitionList::new();
            for e in all.elements() {
                asked
                    .add_partition_offset(e.topic(), e.partition(), Offset::Offset(*ms))
                    .context("asking for offsets by time")?;
            }
            Some(
                consumer
                    .offsets_for_times(asked, TIMEOUT)
                    .context("cannot look the offsets up by time")?,
            )
        }
        _ => None,
    };
    let mut moved = Vec::new();
    let mut commit = TopicPartitionList::new();
    for e in all.elements() {
        let (topic, partition) = (e.topic(), e.partition());
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, TIMEOUT)
            .with_context(|| format!("cannot read where {topic}/{partition} starts and ends"))?;
        let now = match position {
            Position::Earliest => low,
            Position::Latest => high,
            Position::Offset(o) => (*o).clamp(low, high),
            Position::Time(_) => match times
                .as_ref()
                .and_then(|t| t.find_partition(topic, partition))
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) if o >= 0 => o.clamp(low, high),
                _ => high,
            },
            Position::Partitions(pairs) => match pairs.iter().find(|(p, _)| *p == partition) {
                Some(&(_, o)) => o.clamp(low, high),
                None => continue,
            },
        };
        commit
            .add_partition_offset(topic, partition, Offset::Offset(now))
            .context("committing an offset")?;
        moved.push(Moved {
            topic: topic.to_owned(),
            partition,
            was: was(topic, partition),
            now,
        });
    }
    if commit.count() > 0 {
        consumer
            .commit(&commit, CommitMode::Sync)
            .with_context(|| format!("cannot commit the group {group}'s new offsets"))?;
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_and_name_what_is_wrong() {
        assert_eq!("earliest".parse(), Ok(Position::Earliest));
        assert_eq!(" latest ".parse(), Ok(Position::Latest));
        assert_eq!("42".parse(), Ok(Position::Offset(42)));
        assert_eq!(
            "@1700000000000".parse(),
            Ok(Position::Time(1_700_000_000_000))
        );
        assert_eq!(
            "2023-11-14T22:13:20Z".parse(),
            Ok(Position::Time(1_700_000_000_000))
        );
        assert_eq!(
            "0:5, 2:7".parse(),
            Ok(Position::Partitions(vec![(0, 5), (2, 7)]))
        );
        assert_eq!(
            "2023-11-14 22:13:20Z".parse(),
            Ok(Position::Time(1_700_000_000_000)),
            "a space for the T"
        );
        for bad in [
            "",
            "soon",
            "-1",
            "0:5,0:6",
            "0:-1",
            "x:1",
            "@x",
            "2023-13-01T00:00:00Z",
        ] {
            let e = bad.parse::<Position>().unwrap_err();
            assert!(e.contains("is not a position"), "{bad}: {e}");
        }
        assert_eq!(
            Position::Time(1_700_000_000_000).to_string(),
            "2023-11-14T22:13:20.000Z"
        );
    }
}
