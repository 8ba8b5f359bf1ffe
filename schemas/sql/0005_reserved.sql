-- 0005: number reserved for another branch's migration (merged separately); this file only
-- keeps the numbering gap-free on this branch and is replaced by that migration at merge.
SELECT 1;
