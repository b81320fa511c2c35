-- The services' databases, one per service, on the PostgreSQL server of compose.yaml. The official
-- image runs this file once, as POSTGRES_USER (who then owns the databases), when it initialises an
-- empty data volume: after `docker compose down -v`, not on every start. The services create their
-- tables themselves (migrations at start-up), not their databases.
--
-- `order` is a reserved word in SQL, hence the quotes; the services' URLs name it as it is.
CREATE DATABASE "order";
CREATE DATABASE payment;
CREATE DATABASE notifier;
