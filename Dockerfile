# One image with every ordermesh binary; compose picks the binary with `command`.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The production profile (Cargo.toml): optimised across crates, slower to build, cheaper to run.
RUN cargo build --profile production --locked --bin ordermesh --bin order --bin payment --bin notifier

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 ordermesh && mkdir /data && chown ordermesh /data
COPY --from=build /src/target/production/ordermesh /src/target/production/order \
     /src/target/production/payment /src/target/production/notifier /usr/local/bin/
USER ordermesh
WORKDIR /data
