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

# helm and kustomize render the platform repo's Helm releases and
# kustomizations; the same pinned versions the tests run
# (tools/render/build.sh), from the Go module proxy.
FROM golang:1.26-bookworm AS render
RUN CGO_ENABLED=0 GOBIN=/out go install -trimpath helm.sh/helm/v3/cmd/helm@v3.22.0 \
 && CGO_ENABLED=0 GOBIN=/out go install -trimpath sigs.k8s.io/kustomize/kustomize/v5@v5.8.2

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/ferry /usr/local/bin/ferry
COPY --from=render /out/helm /out/kustomize /usr/local/bin/
COPY tools/airflow_dagbag.py /opt/ferry/tools/airflow_dagbag.py
# The distroless "nonroot" uid; the Deployment enforces it too.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ferry"]
CMD ["run", "--config", "/etc/ferry/ferry.yaml"]
