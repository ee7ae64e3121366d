#!/usr/bin/env bash
# usage: scripts/ci-tag.sh     (the release job of .gitlab-ci.yml)
#
# Tags the pipeline's commit as the release v$CI_PIPELINE_IID on the project's remote;
# the servers' tag-deploy polls for such tags. Pushes with the job's own token
# (CI_JOB_TOKEN: the project must allow job tokens to push, "Settings > CI/CD > Job
# token permissions > Allow Git push requests to the repository"), or with
# RELEASE_TAG_TOKEN, a project access token with write_repository only, when set. The
# token reaches git through GIT_ASKPASS, never on a command line. Re-running the job is
# harmless: a tag already on this commit is success; on another commit, a failure.
# MATERIA_TAG_PUSH_URL overrides where it pushes (tests: a local bare repository).
set -euo pipefail
tag=v${CI_PIPELINE_IID:?CI_PIPELINE_IID is not set: run in GitLab CI}
sha=${CI_COMMIT_SHA:?}
url=${MATERIA_TAG_PUSH_URL:-https://gitlab-ci-token@${CI_SERVER_HOST:?}/${CI_PROJECT_PATH:?}.git}
askpass=$(mktemp)
trap 'rm -f "$askpass"' EXIT
# shellcheck disable=SC2016 # expanded when git runs it
printf '#!/bin/sh\nprintf "%%s\\n" "${RELEASE_TAG_TOKEN:-$CI_JOB_TOKEN}"\n' >"$askpass"
chmod 0700 "$askpass"
export GIT_ASKPASS=$askpass GIT_TERMINAL_PROMPT=0

existing=$(git ls-remote "$url" "refs/tags/$tag" | cut -f1)
if [[ -n $existing ]]; then
    peeled=$(git ls-remote "$url" "refs/tags/$tag^{}" | cut -f1)
    if [[ ${peeled:-$existing} == "$sha" ]]; then
        echo "ci-tag: $tag is already $sha"
        exit 0
    fi
    echo "ci-tag: $tag already exists on another commit (${peeled:-$existing})" >&2
    exit 1
fi
git push --quiet "$url" "$sha:refs/tags/$tag"
echo "ci-tag: tagged $sha as $tag"
