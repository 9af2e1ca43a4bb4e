-- The shopfloor database and its two roles. Run by psql as a superuser, with variables:
--   database, hub_role, reader_role: names (shopfloor, shopfloor, grafana_reader)
--   hub_password_file, reader_password_file: files holding the passwords
-- (deploy/postgres/initdb/10-shopfloor.sh passes them; tests/deploy runs it too).
--
-- The hub's role owns the database and creates its tables, partitions and migrations.
-- Grafana's role may connect and read every table the hub creates, now and later, and
-- nothing else: no writes, no new tables, and every transaction is read-only.

\set ON_ERROR_STOP on
\set hub_password `cat :'hub_password_file'`
\set reader_password `cat :'reader_password_file'`

CREATE ROLE :"hub_role" LOGIN PASSWORD :'hub_password';
CREATE ROLE :"reader_role" LOGIN PASSWORD :'reader_password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE;
ALTER ROLE :"reader_role" SET default_transaction_read_only = on;
-- A dashboard query that runs away must not hold the database.
ALTER ROLE :"reader_role" SET statement_timeout = '30s';
-- JIT compiling costs more than it saves on the dashboards' queries: the wall's state
-- timeline at 50 machines x 30 days took 1.19 s with it, 0.26 s without
-- (bench/dashboard_queries.py). The hub's own connections turn it off too.
ALTER ROLE :"reader_role" SET jit = off;

CREATE DATABASE :"database" OWNER :"hub_role" ENCODING 'UTF8' TEMPLATE template0;
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"database" TO :"hub_role";
GRANT CONNECT ON DATABASE :"database" TO :"reader_role";

\connect :"database"
-- PostgreSQL 15: the public schema belongs to the database owner (the hub's role).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"reader_role";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"reader_role";
-- Tables, partitions, views and schemas the hub creates later are readable too.
ALTER DEFAULT PRIVILEGES FOR ROLE :"hub_role" GRANT SELECT ON TABLES TO :"reader_role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"hub_role" GRANT USAGE ON SCHEMAS TO :"reader_role";
