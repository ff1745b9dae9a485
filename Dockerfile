# syntax=docker/dockerfile:1
# hubrelay: static binary on a distroless base, running as a non-root user, with
# examples/container/hubrelay.yaml as its config (listening on 0.0.0.0:8092, admin on 8093,
# everything it writes under the /var/lib/hubrelay volume). See examples/container/README.md.
#   docker build --build-arg VERSION=$(git describe --always) -t hubrelay .
#   docker run -d --name hubrelay -p 127.0.0.1:8092:8092 -p 127.0.0.1:8093:8093 \
#     -v "$PWD/examples/container/hubrelay.yaml:/etc/hubrelay/hubrelay.yaml:ro" \
#     -v hubrelay-data:/var/lib/hubrelay hubrelay
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/hubrelay ./cmd/hubrelay \
 && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/hubrelay /usr/local/bin/hubrelay
COPY examples/container/hubrelay.yaml /etc/hubrelay/hubrelay.yaml
# The spool must live on a volume: it holds every accepted, undelivered change.
COPY --from=build --chown=65532:65532 /out/data /var/lib/hubrelay
USER 65532:65532
WORKDIR /var/lib/hubrelay
VOLUME ["/var/lib/hubrelay"]
EXPOSE 8092 8093
ENTRYPOINT ["/usr/local/bin/hubrelay"]
CMD ["serve", "-config", "/etc/hubrelay/hubrelay.yaml"]
