# The model repository as an image, for the Job that fills the Kubernetes volume (deploy/kubernetes/
# base/model-repository.yaml). Its build context is the repository folder itself (the root's
# .dockerignore keeps models/ out of the services' images): `make k8s-model-image`, i.e.
#   docker build -f deploy/kubernetes/model-repository.Dockerfile \
#       -t <registry>/modelgate/model-repository:<tag> models
# The base is the services' own: anything with `cp` does.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
COPY . /repository/
USER 1000:1000
