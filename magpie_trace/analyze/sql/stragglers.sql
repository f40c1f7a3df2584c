-- stragglers: per step, the node the others waited for most (the largest waited_for_us in
-- wait_timeline), by how much, and for how many steps in a row that node has been the straggler:
-- a long streak points at one slow node, link or GPU rather than noise.
WITH ranked AS (
    SELECT step, node, waited_for_us, times_last,
           sum(waited_for_us) OVER (PARTITION BY step) AS step_waited_for_us,
           row_number() OVER (PARTITION BY step ORDER BY waited_for_us DESC, node) AS place
    FROM wait_timeline
),
top AS (
    SELECT step, node, waited_for_us, times_last,
           100 * waited_for_us / nullif(step_waited_for_us, 0) AS share_pct
    FROM ranked WHERE place = 1 AND waited_for_us > 0
),
runs AS (
    SELECT *, row_number() OVER (ORDER BY step) - row_number() OVER (PARTITION BY node ORDER BY step) AS run
    FROM top
)
SELECT step, node AS straggler_node, waited_for_us, times_last, share_pct,
       row_number() OVER (PARTITION BY node, run ORDER BY step) AS streak
FROM runs
ORDER BY step;
