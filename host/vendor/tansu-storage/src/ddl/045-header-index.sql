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

-- runnel: not in Tansu 0.6.0. Without it, every record fetched scans the
-- whole header table (header_fetch.sql looks up a record's headers by
-- topition and offset), so fetches slow down as the broker's data grows:
-- with a few headers per record, a broker with tens of thousands of records
-- spent nearly all its time in that scan and clients timed out.
create index if not exists header_topition_offset_id on header (topition, offset_id);
