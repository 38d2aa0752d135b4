//! The embedded broker's consumer-group coordinator (Tansu's
//! `coordinator::group::administrator::Controller`, patched under
//! `host/vendor/tansu-broker`) when a member's session runs out: the members
//! that outlive it must be told to rejoin, so that a new generation hands
//! out the dead member's partitions, and no member may be given two
//! different assignments for one generation (issue 17).
//!
//! Driven through the `Coordinator` trait with in-memory storage, the way
//! the embedded broker's request handlers use it. Sessions run out in real
//! time: each test takes about 13 s (they run in parallel).

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tansu_broker::coordinator::group::Coordinator;
use tansu_broker::coordinator::group::administrator::Controller;
use tansu_sans_io::join_group_request::JoinGroupRequestProtocol;
use tansu_sans_io::sync_group_request::SyncGroupRequestAssignment;
use tansu_sans_io::{ErrorCode, HeartbeatResponse, JoinGroupResponse, SyncGroupResponse};
use tansu_storage::StorageContainer;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};
use url::Url;

const GROUP: &str = "runnel-group";
const PROTOCOL_TYPE: &str = "consumer";
const RANGE: &str = "range";
// Longer than the 3 s a follower's JoinGroup waits in Tansu (PAUSE_MS), in
// which the member sends nothing else (runnel's consumers use 10 s).
const SESSION_MS: u64 = 6_000;
const HEARTBEAT_MS: u64 = 150;
// How long before c's session runs out a and b fall quiet, and how long
// after it they speak again.
const QUIET_BEFORE_MS: u64 = 500;
const QUIET_AFTER_MS: u64 = 300;

type Ctl = Controller<StorageContainer>;

async fn controller() -> Ctl {
    let storage = StorageContainer::builder()
        .cluster_id("runnel")
        .node_id(111)
        .advertised_listener(Url::parse("tcp://127.0.0.1:9092/").unwrap())
        .storage(Url::parse("memory://tansu/").unwrap())
        .build()
        .await
        .unwrap();
    Controller::with_storage(storage).unwrap()
}

fn code(error_code: i16) -> ErrorCode {
    ErrorCode::try_from(error_code).unwrap()
}

/// A member's subscription: the same bytes every time it joins, so that a
/// rejoin changes nothing but the member's liveness.
fn protocols(member: &str) -> [JoinGroupRequestProtocol; 1] {
    [JoinGroupRequestProtocol::default()
        .name(RANGE.into())
        .metadata(Bytes::from(format!("subscription of {member}")))]
}

async fn join(ctl: &mut Ctl, name: &str, member_id: &str) -> JoinGroupResponse {
    let body = ctl
        .join(
            Some(name),
            GROUP,
            SESSION_MS as i32,
            Some(30_000),
            member_id,
            None,
            PROTOCOL_TYPE,
            Some(&protocols(name)[..]),
            None,
        )
        .await
        .unwrap();
    JoinGroupResponse::try_from(body).unwrap()
}

/// JoinGroup without a member id: the coordinator answers
/// MEMBER_ID_REQUIRED with one (and counts the member in).
async fn member_id(ctl: &mut Ctl, name: &str) -> String {
    let r = join(ctl, name, "").await;
    assert_eq!(code(r.error_code), ErrorCode::MemberIdRequired, "{r:?}");
    r.member_id
}

async fn sync(
    ctl: &mut Ctl,
    generation: i32,
    member_id: &str,
    assignments: &[(&str, &str)],
) -> SyncGroupResponse {
    let assignments: Vec<_> = assignments
        .iter()
        .map(|(member, partitions)| (*member, Bytes::from(partitions.to_string())))
        .collect();
    sync_bytes(ctl, generation, member_id, &assignments).await
}

async fn sync_bytes(
    ctl: &mut Ctl,
    generation: i32,
    member_id: &str,
    assignments: &[(&str, Bytes)],
) -> SyncGroupResponse {
    let assignments: Vec<_> = assignments
        .iter()
        .map(|(member, assignment)| {
            SyncGroupRequestAssignment::default()
                .member_id((*member).into())
                .assignment(assignment.clone())
        })
        .collect();
    let body = ctl
        .sync(
            GROUP,
            generation,
            member_id,
            None,
            Some(PROTOCOL_TYPE),
            Some(RANGE),
            Some(&assignments[..]),
        )
        .await
        .unwrap();
    SyncGroupResponse::try_from(body).unwrap()
}

async fn heartbeat(ctl: &mut Ctl, generation: i32, member_id: &str) -> ErrorCode {
    let body = ctl
        .heartbeat(GROUP, generation, member_id, None)
        .await
        .unwrap();
    code(HeartbeatResponse::try_from(body).unwrap().error_code)
}

/// A member's heartbeat thread: every HEARTBEAT_MS with the generation it
/// last synced, until stopped. Answers are ignored (the test reads them
/// itself when it matters); it only keeps the member's session alive.
struct Heartbeats {
    generation: Arc<AtomicI32>,
    running: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Heartbeats {
    fn start(ctl: &Ctl, member_id: &str) -> Self {
        let generation = Arc::new(AtomicI32::new(-1));
        let running = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn({
            let mut ctl = ctl.clone();
            let member_id = member_id.to_owned();
            let generation = generation.clone();
            let running = running.clone();
            async move {
                while running.load(Ordering::SeqCst) {
                    let g = generation.load(Ordering::SeqCst);
                    let _ = heartbeat(&mut ctl, g, &member_id).await;
                    sleep(Duration::from_millis(HEARTBEAT_MS)).await;
                }
            }
        });
        Self {
            generation,
            running,
            task,
        }
    }

    fn synced(&self, generation: i32) {
        self.generation.store(generation, Ordering::SeqCst);
    }

    /// Stops and returns once no heartbeat of this member is in flight.
    async fn stop(self) {
        self.running.store(false, Ordering::SeqCst);
        self.task.await.unwrap();
    }
}

/// Every assignment a member was given, by (member, generation): a second,
/// different one for the same pair is the bug.
#[derive(Default)]
struct Ledger(BTreeMap<(String, i32), Bytes>);

impl Ledger {
    fn record(&mut self, who: &str, member_id: &str, generation: i32, r: &SyncGroupResponse) {
        assert_eq!(code(r.error_code), ErrorCode::None, "{who}'s sync: {r:?}");
        let key = (member_id.to_owned(), generation);
        if let Some(before) = self.0.insert(key, r.assignment.clone()) {
            assert_eq!(
                before, r.assignment,
                "{who} was given two different assignments for generation {generation}"
            );
        }
    }
}

struct Group {
    ctl: Ctl,
    a: String,
    b: String,
    c: String,
    hb: [Heartbeats; 3],
    generation: i32,
    ledger: Ledger,
}

/// a, b and c join; a leads and assigns {a: p0, b: p1, c: p2}; all three
/// sync one generation and heartbeat it.
async fn formed() -> Group {
    let mut ctl = controller().await;
    let a = member_id(&mut ctl, "a").await;
    let hb_a = Heartbeats::start(&ctl, &a);
    let b = member_id(&mut ctl, "b").await;
    let hb_b = Heartbeats::start(&ctl, &b);
    let c = member_id(&mut ctl, "c").await;
    let hb_c = Heartbeats::start(&ctl, &c);

    let ja = join(&mut ctl, "a", &a).await;
    assert_eq!(code(ja.error_code), ErrorCode::None, "{ja:?}");
    assert_eq!(ja.leader, a, "{ja:?}");
    let generation = ja.generation_id;
    assert_eq!(ja.members.as_ref().map(Vec::len), Some(3), "{ja:?}");

    // A follower's JoinGroup waits 3 s while there is a leader (Tansu's
    // PAUSE_MS): b and c join at once.
    let (jb, jc) = tokio::join!(
        {
            let mut ctl = ctl.clone();
            let b = b.clone();
            async move { join(&mut ctl, "b", &b).await }
        },
        {
            let mut ctl = ctl.clone();
            let c = c.clone();
            async move { join(&mut ctl, "c", &c).await }
        }
    );
    for j in [&jb, &jc] {
        assert_eq!(code(j.error_code), ErrorCode::None, "{j:?}");
        assert_eq!(j.generation_id, generation, "{j:?}");
        assert_eq!(j.leader, a, "{j:?}");
    }

    let mut ledger = Ledger::default();
    let plan = [(a.as_str(), "p0"), (b.as_str(), "p1"), (c.as_str(), "p2")];
    let sa = sync(&mut ctl, generation, &a, &plan).await;
    ledger.record("a", &a, generation, &sa);
    let sb = sync(&mut ctl, generation, &b, &[]).await;
    ledger.record("b", &b, generation, &sb);
    let sc = sync(&mut ctl, generation, &c, &[]).await;
    ledger.record("c", &c, generation, &sc);
    assert_eq!(
        [sa.assignment, sb.assignment, sc.assignment],
        [&b"p0"[..], b"p1", b"p2"].map(Bytes::from_static)
    );
    for hb in [&hb_a, &hb_b, &hb_c] {
        hb.synced(generation);
    }
    for m in [&a, &b, &c] {
        assert_eq!(heartbeat(&mut ctl, generation, m).await, ErrorCode::None);
    }

    Group {
        ctl,
        a,
        b,
        c,
        hb: [hb_a, hb_b, hb_c],
        generation,
        ledger,
    }
}

/// c stops (its process is killed: no LeaveGroup); a and b heartbeat until
/// shortly before c's session runs out, then fall quiet (a GC pause, a
/// restarting broker) until just after. Returns the group with no
/// heartbeat running and c's session over, a's and b's not.
async fn c_dies_unnoticed(g: Group) -> (Ctl, String, String, String, i32, Ledger) {
    let Group {
        ctl,
        a,
        b,
        c,
        hb: [hb_a, hb_b, hb_c],
        generation,
        ledger,
    } = g;
    hb_c.stop().await;
    let c_last = Instant::now();
    sleep_until(c_last + Duration::from_millis(SESSION_MS - QUIET_BEFORE_MS)).await;
    hb_a.stop().await;
    hb_b.stop().await;
    sleep_until(c_last + Duration::from_millis(SESSION_MS + QUIET_AFTER_MS)).await;
    (ctl, a, b, c, generation, ledger)
}

/// The first request after c's session ran out is b's JoinGroup, with its
/// unchanged subscription. Unpatched, the coordinator went back to forming
/// the *same* generation: b became its leader and assigned c's partition,
/// while a, which had synced that generation, kept getting successful
/// heartbeats and never learnt that its assignment had changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_after_an_unnoticed_expiry_starts_a_new_generation() {
    let (mut ctl, a, b, _c, g0, mut ledger) = c_dies_unnoticed(formed().await).await;

    let jb = join(&mut ctl, "b", &b).await;
    assert_eq!(code(jb.error_code), ErrorCode::None, "{jb:?}");
    assert_eq!(jb.leader, b, "b rejoins first, so it leads: {jb:?}");
    let g1 = jb.generation_id;
    let plan = [(a.as_str(), "p0 p1"), (b.as_str(), "p2")];
    let sb = sync(&mut ctl, g1, &b, &plan).await;
    ledger.record("b", &b, g1, &sb);

    // a still holds generation g0 and its assignment p0.
    let hb = heartbeat(&mut ctl, g0, &a).await;
    if hb == ErrorCode::None {
        let sa = sync(&mut ctl, g0, &a, &[]).await;
        panic!(
            "after c's expiry b led generation {g1} (a synced {g0}), yet a's heartbeat for \
             {g0} succeeded: a keeps consuming p0 while the coordinator now gives it \
             {:?} for generation {g0}",
            sa.assignment
        );
    }
    assert!(
        matches!(
            hb,
            ErrorCode::RebalanceInProgress | ErrorCode::IllegalGeneration
        ),
        "a's heartbeat for its old generation: {hb:?}"
    );
    assert!(g1 > g0, "b's rejoin after c's expiry kept generation {g0}");

    // a rejoins and is given what b assigned it.
    let ja = join(&mut ctl, "a", &a).await;
    assert_eq!(code(ja.error_code), ErrorCode::None, "{ja:?}");
    assert_eq!(ja.generation_id, g1, "{ja:?}");
    let sa = sync(&mut ctl, g1, &a, &[]).await;
    ledger.record("a", &a, g1, &sa);
    assert_eq!(sa.assignment, Bytes::from_static(b"p0 p1"));
    assert_eq!(heartbeat(&mut ctl, g1, &a).await, ErrorCode::None);
    assert_eq!(heartbeat(&mut ctl, g1, &b).await, ErrorCode::None);
}

/// The first request after c's session ran out is a's heartbeat. Unpatched,
/// a was told to rebalance but the group stayed formed in the same
/// generation: b's heartbeats kept succeeding, a's rejoin returned that
/// generation again and its sync the old assignment, so c's partition was
/// owned by nobody, for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_after_an_unnoticed_expiry_starts_a_new_generation() {
    let (mut ctl, a, b, _c, g0, mut ledger) = c_dies_unnoticed(formed().await).await;

    assert_eq!(
        heartbeat(&mut ctl, g0, &a).await,
        ErrorCode::RebalanceInProgress
    );
    let hb = heartbeat(&mut ctl, g0, &b).await;
    assert!(
        matches!(
            hb,
            ErrorCode::RebalanceInProgress | ErrorCode::IllegalGeneration
        ),
        "c's session ran out, a was told to rebalance, but b's heartbeat for generation \
         {g0} got {hb:?}: b is never told and c's partition is never reassigned"
    );

    let ja = join(&mut ctl, "a", &a).await;
    assert_eq!(code(ja.error_code), ErrorCode::None, "{ja:?}");
    assert_eq!(ja.leader, a, "{ja:?}");
    let g1 = ja.generation_id;
    assert!(g1 > g0, "a's rejoin after c's expiry kept generation {g0}");
    let plan = [(a.as_str(), "p0 p1"), (b.as_str(), "p2")];
    let sa = sync(&mut ctl, g1, &a, &plan).await;
    ledger.record("a", &a, g1, &sa);
    assert_eq!(sa.assignment, Bytes::from_static(b"p0 p1"));

    let jb = join(&mut ctl, "b", &b).await;
    assert_eq!(code(jb.error_code), ErrorCode::None, "{jb:?}");
    assert_eq!(jb.generation_id, g1, "{jb:?}");
    let sb = sync(&mut ctl, g1, &b, &[]).await;
    ledger.record("b", &b, g1, &sb);
    assert_eq!(sb.assignment, Bytes::from_static(b"p2"));
}

/// The leader dies after the group's members joined but before it synced,
/// and the first request after its session ran out is a follower's
/// SyncGroup (which carries no assignments). Unpatched, the leaderless
/// group took that sync as the leader's: the generation was formed with no
/// assignment at all, every heartbeat succeeded, and nobody consumed
/// anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cannot_complete_a_leaderless_generation() {
    let mut ctl = controller().await;
    let a = member_id(&mut ctl, "a").await;
    let hb_a = Heartbeats::start(&ctl, &a);
    let b = member_id(&mut ctl, "b").await;
    let hb_b = Heartbeats::start(&ctl, &b);
    let ja = join(&mut ctl, "a", &a).await;
    assert_eq!(ja.leader, a, "{ja:?}");
    let jb = join(&mut ctl, "b", &b).await;
    assert_eq!(code(jb.error_code), ErrorCode::None, "{jb:?}");
    assert_eq!(jb.leader, a, "{jb:?}");
    let g0 = jb.generation_id;

    // a dies before syncing; b falls quiet shortly before a's session runs
    // out, then sends its SyncGroup.
    hb_a.stop().await;
    let a_last = Instant::now();
    sleep_until(a_last + Duration::from_millis(SESSION_MS - QUIET_BEFORE_MS)).await;
    hb_b.stop().await;
    sleep_until(a_last + Duration::from_millis(SESSION_MS + QUIET_AFTER_MS)).await;

    let sb = sync(&mut ctl, g0, &b, &[]).await;
    assert_eq!(
        code(sb.error_code),
        ErrorCode::RebalanceInProgress,
        "b, a follower, synced generation {g0} after its leader's session ran out: \
         {sb:?}"
    );

    // b rejoins, leads, and assigns everything to itself.
    let jb = join(&mut ctl, "b", &b).await;
    assert_eq!(code(jb.error_code), ErrorCode::None, "{jb:?}");
    assert_eq!(jb.leader, b, "{jb:?}");
    let g1 = jb.generation_id;
    let sb = sync(&mut ctl, g1, &b, &[(b.as_str(), "p0 p1 p2")]).await;
    assert_eq!(code(sb.error_code), ErrorCode::None, "{sb:?}");
    assert_eq!(sb.assignment, Bytes::from_static(b"p0 p1 p2"));
    assert_eq!(heartbeat(&mut ctl, g1, &b).await, ErrorCode::None);
}

/// A member dies while the group is forming, after the leader was given
/// the list of members (with it) and before the leader synced, and the
/// first request after its session ran out is the leader's SyncGroup.
/// Unpatched, the coordinator took the assignment as it was, the dead
/// member's partition included: owned by nobody until the next rebalance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cannot_assign_to_a_member_that_died_while_forming() {
    let mut ctl = controller().await;
    let a = member_id(&mut ctl, "a").await;
    let hb_a = Heartbeats::start(&ctl, &a);
    let b = member_id(&mut ctl, "b").await;
    let hb_b = Heartbeats::start(&ctl, &b);
    let c = member_id(&mut ctl, "c").await;
    let hb_c = Heartbeats::start(&ctl, &c);
    let ja = join(&mut ctl, "a", &a).await;
    assert_eq!(ja.leader, a, "{ja:?}");
    assert_eq!(ja.members.as_ref().map(Vec::len), Some(3), "{ja:?}");
    let g0 = ja.generation_id;

    hb_c.stop().await;
    let c_last = Instant::now();
    sleep_until(c_last + Duration::from_millis(SESSION_MS - QUIET_BEFORE_MS)).await;
    hb_a.stop().await;
    hb_b.stop().await;
    sleep_until(c_last + Duration::from_millis(SESSION_MS + QUIET_AFTER_MS)).await;

    let plan = [(a.as_str(), "p0"), (b.as_str(), "p1"), (c.as_str(), "p2")];
    let sa = sync(&mut ctl, g0, &a, &plan).await;
    assert_eq!(
        code(sa.error_code),
        ErrorCode::RebalanceInProgress,
        "a, the leader, synced generation {g0} with c's partition after c's session ran \
         out: {sa:?}"
    );

    // a rejoins, without c, and assigns c's partition to b.
    let ja = join(&mut ctl, "a", &a).await;
    assert_eq!(code(ja.error_code), ErrorCode::None, "{ja:?}");
    assert_eq!(ja.leader, a, "{ja:?}");
    assert_eq!(ja.members.as_ref().map(Vec::len), Some(2), "{ja:?}");
    let g1 = ja.generation_id;
    let plan = [(a.as_str(), "p0"), (b.as_str(), "p1 p2")];
    let sa = sync(&mut ctl, g1, &a, &plan).await;
    assert_eq!(code(sa.error_code), ErrorCode::None, "{sa:?}");
    assert_eq!(sa.assignment, Bytes::from_static(b"p0"));
}

/// Commits `offset` for partition 0 of a topic as `member_id` of
/// `generation`; the partition's error code.
async fn commit(ctl: &mut Ctl, generation: i32, member_id: &str, offset: i64) -> ErrorCode {
    commit_partitions(ctl, generation, member_id, &[0], offset).await[0]
}

/// Commits `offset` for `partitions` of topic "t" as `member_id` of
/// `generation`; each partition's error code, in order.
async fn commit_partitions(
    ctl: &mut Ctl,
    generation: i32,
    member_id: &str,
    partitions: &[i32],
    offset: i64,
) -> Vec<ErrorCode> {
    use tansu_broker::coordinator::group::OffsetCommit;
    use tansu_sans_io::OffsetCommitResponse;
    use tansu_sans_io::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    let topics = [OffsetCommitRequestTopic::default()
        .name("t".into())
        .partitions(Some(
            partitions
                .iter()
                .map(|&partition| {
                    OffsetCommitRequestPartition::default()
                        .partition_index(partition)
                        .committed_offset(offset)
                        .committed_leader_epoch(Some(0))
                        .commit_timestamp(None)
                        .committed_metadata(Some("".into()))
                })
                .collect(),
        ))];
    let body = ctl
        .offset_commit(OffsetCommit {
            group_id: GROUP,
            generation_id_or_member_epoch: Some(generation),
            member_id: Some(member_id),
            group_instance_id: None,
            retention_time_ms: None,
            topics: Some(&topics),
        })
        .await
        .unwrap();
    let topics = OffsetCommitResponse::try_from(body)
        .unwrap()
        .topics
        .unwrap();
    let answered: BTreeMap<i32, ErrorCode> = topics
        .iter()
        .flat_map(|t| t.partitions.clone().unwrap())
        .map(|p| (p.partition_index, code(p.error_code)))
        .collect();
    partitions.iter().map(|p| answered[p]).collect()
}

/// c was paused past its session, the group noticed (a's heartbeat) and
/// moved on; c comes back and commits with its old member id, as a resumed
/// process's automatic commit does. Unpatched, the commit was taken: it
/// moved the offsets of partitions another member owns past records that
/// member had not run, and a processor's state then skipped those records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_session_ran_out_cannot_commit() {
    let (mut ctl, a, _b, c, g0, _ledger) = c_dies_unnoticed(formed().await).await;
    // The topic is not in this storage: a member of the group gets past the
    // member check to the storage's answer.
    let topic_unknown = ErrorCode::UnknownTopicOrPartition;
    assert_eq!(commit(&mut ctl, g0, &a, 5).await, topic_unknown);
    // a's heartbeat notices that c's session ran out.
    assert_eq!(
        heartbeat(&mut ctl, g0, &a).await,
        ErrorCode::RebalanceInProgress
    );
    assert_eq!(
        commit(&mut ctl, g0, &c, 100).await,
        ErrorCode::UnknownMemberId
    );
}

/// A consumer protocol assignment (ConsumerProtocolAssignment version 0, as
/// librdkafka writes it) of `partitions` of topic "t".
fn assignment(partitions: &[i32]) -> Bytes {
    let mut b = Vec::new();
    b.extend_from_slice(&0i16.to_be_bytes()); // version
    b.extend_from_slice(&1i32.to_be_bytes()); // one topic
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(b"t");
    b.extend_from_slice(&(partitions.len() as i32).to_be_bytes());
    for p in partitions {
        b.extend_from_slice(&p.to_be_bytes());
    }
    b.extend_from_slice(&(-1i32).to_be_bytes()); // no user data
    Bytes::from(b)
}

/// The embedded broker hands out a generation's assignment as soon as its
/// leader syncs, without waiting for every member to rejoin (Kafka's join
/// barrier), so a member that has not heard of the new generation yet may
/// still run, and commit, a partition the leader gave to another. Unpatched,
/// such a commit was taken: it moved the new owner's offset past records
/// whose state the new owner never saw (a keyed count in the chaos soak came
/// out short). A commit is taken only from a partition's owner in the latest
/// completed generation, or, for a partition no one owns in it (revoked, in
/// the cooperative protocol, before it is assigned again), from its owner in
/// the generation before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_partitions_owner_commits_its_offset() {
    // The topic is not in this storage: a commit that gets past the owner
    // check gets the storage's answer.
    let taken = ErrorCode::UnknownTopicOrPartition;
    let refused = ErrorCode::RebalanceInProgress;

    let mut ctl = controller().await;
    let a = member_id(&mut ctl, "a").await;
    let hb_a = Heartbeats::start(&ctl, &a);
    let b = member_id(&mut ctl, "b").await;
    let hb_b = Heartbeats::start(&ctl, &b);
    let ja = join(&mut ctl, "a", &a).await;
    assert_eq!(ja.leader, a, "{ja:?}");
    let jb = join(&mut ctl, "b", &b).await;
    assert_eq!(code(jb.error_code), ErrorCode::None, "{jb:?}");
    let g0 = jb.generation_id;
    let plan = [
        (a.as_str(), assignment(&[0, 1])),
        (b.as_str(), assignment(&[2])),
    ];
    let sa = sync_bytes(&mut ctl, g0, &a, &plan).await;
    assert_eq!(code(sa.error_code), ErrorCode::None, "{sa:?}");
    let sb = sync_bytes(&mut ctl, g0, &b, &[]).await;
    assert_eq!(sb.assignment, assignment(&[2]));
    hb_a.synced(g0);
    hb_b.synced(g0);

    assert_eq!(
        commit_partitions(&mut ctl, g0, &a, &[0, 1], 5).await,
        [taken, taken]
    );
    assert_eq!(
        commit(&mut ctl, g0, &b, 5).await,
        refused,
        "b commits a's partition"
    );

    // c joins: the group forms a new generation. Until its leader completes
    // it, the owners are those of g0 (as in Kafka, where the old generation
    // commits until the rebalance completes).
    let c = member_id(&mut ctl, "c").await;
    let hb_c = Heartbeats::start(&ctl, &c);
    assert_eq!(
        commit(&mut ctl, g0, &a, 6).await,
        taken,
        "a, g0's owner, while forming"
    );
    assert_eq!(
        commit(&mut ctl, g0, &c, 6).await,
        refused,
        "c, while forming"
    );

    let ja = join(&mut ctl, "a", &a).await;
    assert_eq!(ja.leader, a, "{ja:?}");
    let jc = join(&mut ctl, "c", &c).await;
    assert_eq!(code(jc.error_code), ErrorCode::None, "{jc:?}");
    let g1 = jc.generation_id;
    assert!(g1 > g0);
    // The leader moves partition 0 from a to c at once (as a leader working
    // from a laggard's stale subscription does) and takes partition 2 from
    // b without giving it to anyone yet (as the cooperative protocol does).
    let plan = [
        (a.as_str(), assignment(&[1])),
        (b.as_str(), assignment(&[])),
        (c.as_str(), assignment(&[0])),
    ];
    let sa = sync_bytes(&mut ctl, g1, &a, &plan).await;
    assert_eq!(code(sa.error_code), ErrorCode::None, "{sa:?}");
    let sc = sync_bytes(&mut ctl, g1, &c, &[]).await;
    assert_eq!(sc.assignment, assignment(&[0]));
    hb_a.synced(g1);
    hb_c.synced(g1);

    // a's commit of partition 0 from before it synced g1 (its automatic
    // commit was in flight) is refused; its own partition 1 in the same
    // request is taken.
    assert_eq!(
        commit_partitions(&mut ctl, g0, &a, &[1, 0], 7).await,
        [taken, refused],
        "a commits partition 0 after the leader gave it to c"
    );
    assert_eq!(
        commit(&mut ctl, g1, &c, 7).await,
        taken,
        "c, partition 0's owner"
    );
    // b, which has not rejoined yet, commits partition 2 as it gives it up:
    // no one owns it in g1 and b did in g0.
    assert_eq!(commit_partitions(&mut ctl, g0, &b, &[2], 7).await, [taken]);
    assert_eq!(
        commit_partitions(&mut ctl, g1, &a, &[2], 7).await,
        [refused]
    );
    // A commit outside the group protocol (manually assigned partitions: no
    // member id, generation -1) is not the group's to refuse.
    assert_eq!(commit(&mut ctl, -1, "", 8).await, taken);

    for hb in [hb_a, hb_b, hb_c] {
        hb.stop().await;
    }
}

/// Assignments are bytes a group's leader (any client) chooses. Ones that
/// are not a consumer protocol assignment (a count of 2^31 - 1 topics with
/// nothing after it, a negative name length, a name that is not UTF-8)
/// cannot crash or stall the coordinator: the group's owners are then
/// unknown and commits are not fenced, as before the fence existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_assignments_leave_commits_unfenced() {
    let taken = ErrorCode::UnknownTopicOrPartition;
    let hostile: [&[u8]; 4] = [
        &[0, 0, 0x7f, 0xff, 0xff, 0xff],
        &[0, 0, 0, 0, 0, 1, 0xff, 0xff],
        &[0, 0, 0, 0, 0, 1, 0, 2, 0xc3, 0x28, 0, 0, 0, 1, 0, 0, 0, 0],
        &[0, 9],
    ];
    for bytes in hostile {
        let mut ctl = controller().await;
        let a = member_id(&mut ctl, "a").await;
        let hb_a = Heartbeats::start(&ctl, &a);
        let b = member_id(&mut ctl, "b").await;
        let hb_b = Heartbeats::start(&ctl, &b);
        let ja = join(&mut ctl, "a", &a).await;
        assert_eq!(ja.leader, a, "{ja:?}");
        let jb = join(&mut ctl, "b", &b).await;
        let g = jb.generation_id;
        let plan = [
            (a.as_str(), assignment(&[0])),
            (b.as_str(), Bytes::copy_from_slice(bytes)),
        ];
        let sa = sync_bytes(&mut ctl, g, &a, &plan).await;
        assert_eq!(code(sa.error_code), ErrorCode::None, "{sa:?}");
        assert_eq!(
            commit(&mut ctl, g, &b, 1).await,
            taken,
            "b commits a's partition, the group's owners unreadable ({bytes:?})"
        );
        assert_eq!(commit(&mut ctl, g, &a, 1).await, taken);
        hb_a.stop().await;
        hb_b.stop().await;
    }
}
