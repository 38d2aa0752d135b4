//! `runnel topic create|ls|delete` and the `--kafka` settings of `produce`
//! and `consume`, against the embedded broker.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use clap::Parser;
use runnel_host::cli::topic::{ConsumeArgs, ProduceArgs, TopicCommand, consume, produce, topic};
use runnel_tests::kafka::{Rec, broker, produce as produce_records, unique};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: TopicCommand,
}

/// Runs `runnel topic ARGS`: what it printed, or its error with causes.
async fn runnel_topic(args: &[&str]) -> Result<String, String> {
    let cli = Cli::try_parse_from(["runnel-topic"].iter().chain(args)).unwrap();
    let mut out = String::new();
    topic(&cli.command, &mut out)
        .await
        .map(|()| out)
        .map_err(|e| format!("{e:#}"))
}

/// The `runnel topic ls` row of `name`, split into cells.
fn row(ls: &str, name: &str) -> Option<Vec<String>> {
    ls.lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|cells| cells.first().is_some_and(|c| c == name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_and_delete_a_topic() {
    let (_broker, kafka) = broker().await;
    let b = kafka.brokers.as_str();
    let name = unique("made");

    let said = runnel_topic(&["create", &name, "--brokers", b, "--partitions", "2"])
        .await
        .unwrap();
    assert_eq!(said, format!("created topic {name} (2 partitions)\n"));

    let again = runnel_topic(&["create", &name, "--brokers", b])
        .await
        .unwrap_err();
    assert!(
        again.starts_with(&format!("cannot create topic {name:?} on {b}: ")),
        "{again}"
    );
    assert!(again.contains("already exists"), "{again}");
    let zero = Cli::try_parse_from(["t", "create", "x", "--brokers", b, "--partitions", "0"]);
    assert!(zero.is_err(), "a topic needs a partition");

    let records: Vec<Rec> = (0..5)
        .map(|i| (Some(format!("k{i}")), format!("v{i}"), vec![]))
        .collect();
    produce_records(&kafka, &name, &records).await;
    let ls = runnel_topic(&["ls", "--brokers", b]).await.unwrap();
    assert!(ls.starts_with("TOPIC "), "{ls}");
    let cells = row(&ls, &name).unwrap_or_else(|| panic!("{name} is not in\n{ls}"));
    assert_eq!(cells[1], "2", "{ls}");
    let ends: i64 = cells[2..].iter().map(|c| c.parse::<i64>().unwrap()).sum();
    assert_eq!((cells.len(), ends), (4, 5), "{ls}");

    let said = runnel_topic(&["delete", &name, "--brokers", b])
        .await
        .unwrap();
    assert_eq!(said, format!("deleted topic {name}\n"));
    let ls = runnel_topic(&["ls", "--brokers", b]).await.unwrap();
    assert!(row(&ls, &name).is_none(), "{ls}");
    let again = runnel_topic(&["delete", &name, "--brokers", b])
        .await
        .unwrap_err();
    assert!(
        again.starts_with(&format!("cannot delete topic {name:?} on {b}: ")),
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_settings_reach_every_topic_command() {
    let (_broker, kafka) = broker().await;
    let b = kafka.brokers.as_str();
    let pigeon = "security.protocol=carrier-pigeon";
    for args in [
        vec!["create", "t", "--brokers", b, "--kafka", pigeon],
        vec!["ls", "--brokers", b, "--kafka", pigeon],
        vec!["delete", "t", "--brokers", b, "--kafka", pigeon],
    ] {
        let err = runnel_topic(&args).await.unwrap_err();
        assert!(err.contains("security.protocol"), "{args:?}: {err}");
    }

    #[derive(Parser)]
    struct P {
        #[command(flatten)]
        args: ProduceArgs,
    }
    #[derive(Parser)]
    struct C {
        #[command(flatten)]
        args: ConsumeArgs,
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "a\nb\n").unwrap();
    let name = unique("fed");
    let p = P::try_parse_from([
        "produce",
        "--brokers",
        b,
        "--topic",
        &name,
        "--input",
        input.to_str().unwrap(),
        "--format",
        "lines",
        "--kafka",
        "linger.ms=1",
    ])
    .unwrap();
    runnel_topic(&["create", &name, "--brokers", b])
        .await
        .unwrap();
    assert_eq!(tokio::task::block_in_place(|| produce(&p.args)).unwrap(), 2);
    let c = C::try_parse_from([
        "consume",
        "--brokers",
        b,
        "--topic",
        &name,
        "--count",
        "2",
        "--kafka",
        "fetch.wait.max.ms=10",
    ])
    .unwrap();
    let mut out = Vec::new();
    assert_eq!(
        tokio::task::block_in_place(|| consume(&c.args, &mut out)).unwrap(),
        2
    );

    let p = P::try_parse_from([
        "produce",
        "--brokers",
        b,
        "--topic",
        &name,
        "--kafka",
        pigeon,
    ])
    .unwrap();
    let err = format!("{:#}", produce(&p.args).unwrap_err());
    assert!(err.contains("security.protocol"), "{err}");
    let c = C::try_parse_from([
        "consume",
        "--brokers",
        b,
        "--topic",
        &name,
        "--kafka",
        pigeon,
    ])
    .unwrap();
    let err = format!("{:#}", consume(&c.args, &mut Vec::new()).unwrap_err());
    assert!(err.contains("security.protocol"), "{err}");
}
