# One image with every ordermesh binary; compose picks the binary with `command`.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ordermesh --bin order --bin payment --bin notifier

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 ordermesh && mkdir /data && chown ordermesh /data
COPY --from=build /src/target/release/ordermesh /src/target/release/order \
     /src/target/release/payment /src/target/release/notifier /usr/local/bin/
USER ordermesh
WORKDIR /data
