-- What a DBA sees of the extension: its functions, tables, privileges and comments.
-- (\dx and \dt print differently from one psql to the next; these queries do not.)
SELECT e.extname, e.extversion, n.nspname AS schema, e.extrelocatable AS relocatable,
       pg_catalog.obj_description(e.oid, 'pg_extension') AS description
  FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
 WHERE e.extname = 'pg_reaper';
\df reaper.*
SELECT c.relname, c.relkind, pg_catalog.pg_get_userbyid(c.relowner) AS owner
  FROM pg_catalog.pg_class c
 WHERE c.relnamespace = 'reaper'::regnamespace AND c.relkind = 'r'
 ORDER BY 1;
-- Privileges beyond the owner's (none: the DBA grants), and what PUBLIC may do.
SELECT c.relname, a.grantee::regrole, a.privilege_type
  FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
 WHERE c.relnamespace = 'reaper'::regnamespace AND c.relkind = 'r'
   AND a.grantee OPERATOR(pg_catalog.<>) c.relowner
 ORDER BY 1, 2, 3;
SELECT c.relname,
       pg_catalog.has_table_privilege('public', c.oid, 'SELECT') AS public_select,
       pg_catalog.has_table_privilege('public', c.oid, 'INSERT') AS public_insert
  FROM pg_catalog.pg_class c
 WHERE c.relnamespace = 'reaper'::regnamespace AND c.relkind = 'r'
 ORDER BY 1;
SELECT pg_catalog.has_schema_privilege('public', 'reaper', 'USAGE') AS public_usage;
SELECT p.oid::regprocedure AS function,
       p.provolatile AS volatility, p.proparallel AS parallel, p.prosecdef AS security_definer,
       pg_catalog.has_function_privilege('public', p.oid, 'EXECUTE') AS public_may_execute,
       pg_catalog.obj_description(p.oid, 'pg_proc') AS comment
  FROM pg_catalog.pg_proc p
 WHERE p.pronamespace = 'reaper'::regnamespace
 ORDER BY p.oid::regprocedure::text;
SELECT c.relname, a.attname, pg_catalog.col_description(c.oid, a.attnum) AS comment
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid
 WHERE c.relnamespace = 'reaper'::regnamespace AND c.relkind = 'r' AND a.attnum > 0
   AND pg_catalog.col_description(c.oid, a.attnum) IS NOT NULL
 ORDER BY 1, 2;
SELECT c.relname, pg_catalog.obj_description(c.oid, 'pg_class') AS comment
  FROM pg_catalog.pg_class c
 WHERE c.relnamespace = 'reaper'::regnamespace AND c.relkind = 'r'
 ORDER BY 1;
-- (The settings exist once the library is loaded in the session.)
LOAD 'pg_reaper';
SELECT name, setting, context, short_desc FROM pg_catalog.pg_settings
 WHERE name LIKE 'pg\_reaper.%' ORDER BY 1;
