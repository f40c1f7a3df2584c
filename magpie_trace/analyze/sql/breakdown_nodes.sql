-- breakdown_nodes: the per-rank breakdown averaged over each node's ranks (microseconds per rank),
-- plus the node's exposed communication as a share of its time.
SELECT node, count(*) AS ranks, string_agg(DISTINCT domain, ',') AS domain,
       avg(total_us) AS total_us, avg(busy_us) AS busy_us,
       avg(compute_us) AS compute_us, avg(comm_us) AS comm_us, avg(memcpy_us) AS memcpy_us,
       avg(compute_only_us) AS compute_only_us, avg(overlapped_us) AS overlapped_us,
       avg(exposed_comm_us) AS exposed_comm_us, avg(memcpy_only_us) AS memcpy_only_us,
       avg(idle_us) AS idle_us,
       100 * sum(exposed_comm_us) / nullif(sum(total_us), 0) AS exposed_comm_pct,
       100 * sum(overlapped_us) / nullif(sum(comm_us), 0) AS comm_hidden_pct
FROM breakdown
GROUP BY node
ORDER BY node;
