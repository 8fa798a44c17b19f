# ferry's container image: build with the pinned toolchain, run as non-root
# on a small Debian with only what the binary links (libssl, CA roots).
#   docker build -t ghcr.io/ferry-dev/ferry:dev .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY dags-repo-template ./dags-repo-template
COPY platform-repo-template ./platform-repo-template
RUN cargo build --release --locked --bin ferry \
 && strip target/release/ferry

# helm renders the platform repo's Helm releases; the same pinned version
# the tests run (tools/helm/build.sh), from the Go module proxy.
FROM golang:1.26-bookworm AS helm
RUN CGO_ENABLED=0 GOBIN=/out go install -trimpath helm.sh/helm/v3/cmd/helm@v3.22.0

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/ferry /usr/local/bin/ferry
COPY --from=helm /out/helm /usr/local/bin/helm
COPY tools/airflow_dagbag.py /opt/ferry/tools/airflow_dagbag.py
# The distroless "nonroot" uid; the Deployment enforces it too.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ferry"]
CMD ["run", "--config", "/etc/ferry/ferry.yaml"]
