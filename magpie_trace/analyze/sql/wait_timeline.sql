-- wait_timeline: per step and node, how often the node was the last to arrive at the step's
-- collectives and how long the others waited for it.
--
-- A collective's step is its step on the lowest rank that ran it (ranks run their steps in
-- lockstep). waited_for_us: for the collectives this node arrived last at, the sum of their arrival
-- skews (first arrival to last). wait_us_per_rank: the time this node's ranks spent waiting for
-- others, per rank. step is empty when the traces have no step annotations.
WITH steps_of AS (
    SELECT collective, arg_min(step, rank) AS step FROM events
    WHERE collective IS NOT NULL GROUP BY collective
),
per_collective AS (
    SELECT collective, any_value(last_arrival_node) AS last_node, max(arrival_skew_us) AS skew_us
    FROM collectives GROUP BY collective
),
node_waits AS (
    SELECT s.step, c.node, count(DISTINCT c.collective) AS collectives,
           sum(c.wait_us) / count(DISTINCT c.global_rank) AS wait_us_per_rank
    FROM collectives c JOIN steps_of s USING (collective)
    GROUP BY s.step, c.node
),
caused AS (
    SELECT s.step, p.last_node AS node, count(*) AS times_last, sum(p.skew_us) AS waited_for_us,
           max(p.skew_us) AS max_skew_us
    FROM per_collective p JOIN steps_of s USING (collective)
    GROUP BY s.step, p.last_node
)
SELECT w.step, w.node, w.collectives, coalesce(c.times_last, 0) AS times_last,
       coalesce(c.waited_for_us, 0) AS waited_for_us, coalesce(c.max_skew_us, 0) AS max_skew_us,
       w.wait_us_per_rank
FROM node_waits w LEFT JOIN caused c ON c.node = w.node AND c.step IS NOT DISTINCT FROM w.step
ORDER BY w.step, w.node;
