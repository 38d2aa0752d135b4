-- -*- mode: sql; sql-product: sqlite; -*-
-- Copyright ⓒ 2024-2025 Peter Morgan <peter.james.morgan@gmail.com>
--
-- Licensed under the Apache License, Version 2.0 (the "License");
-- you may not use this file except in compliance with the License.
-- You may obtain a copy of the License at
--
-- http://www.apache.org/licenses/LICENSE-2.0
--
-- Unless required by applicable law or agreed to in writing, software
-- distributed under the License is distributed on an "AS IS" BASIS,
-- WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
-- See the License for the specific language governing permissions and
-- limitations under the License.

-- runnel: compaction that honours min.compaction.lag.ms, as Kafka does. A
-- record is removed only for a later record of the same key that is itself
-- older than the topic's lag ($2 is now, in ms). Without the lag every
-- record but the last of each key went at once: a stateful function's
-- changelog lost the committed value that a restore needs when the last
-- record of a key is a write of an input that was never committed.

with

compacting as (
    select tp.id as topition
    from topition tp
    join topic t on tp.topic = t.id
    join cluster c on t.cluster = c.id
    join topic_configuration tc on tc.topic = t.id
    where c.name = $1
    and tc.name = 'cleanup.policy'
    and tc.value like '%compact%'
),

lag as (
    select tp.id as topition, tc.value as value
    from topition tp
    join topic t on tp.topic = t.id
    join cluster c on t.cluster = c.id
    join topic_configuration tc on tc.topic = t.id
    where c.name = $1
    and tc.name = 'min.compaction.lag.ms'
),

settled as (
    select r.topition as topition, r.k as k, max(r.offset_id) as offset_id
    from record r
    join compacting cp on cp.topition = r.topition
    left join lag on lag.topition = r.topition
    where r.k is not null
    and $2 - r.timestamp >= coalesce(cast(lag.value as integer), 0)
    group by r.topition, r.k
),

compaction as (
    select r.topition as topition, r.offset_id as offset_id
    from record r
    join settled s on r.topition = s.topition and r.k = s.k
    where s.offset_id > r.offset_id
)

delete from record
where (record.topition, record.offset_id) in (select * from compaction);
