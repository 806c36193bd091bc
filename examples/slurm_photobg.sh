#!/bin/bash
# photobg generate (or evaluate) on several machines under Slurm: one `accelerate launch` per node, which starts
# one process per GPU of its node; together they make every output once (README, "Running on many GPUs").
#
#   sbatch examples/slurm_photobg.sh generate catalogue/ --masks masks/ --prompts-file prompts.txt \
#       --num-images 4 --batch-size 4 --skip-existing --output-dir /shared/photobg-out
#   sbatch examples/slurm_photobg.sh evaluate --data /shared/duts-te --model ... --output-dir /shared/eval
#
# The output folder must be on a filesystem every node sees (the run checks it before it starts). With
# --skip-existing, resubmitting the same job after a failure, a time limit or a preemption makes only what is
# missing, on any number of nodes.

#SBATCH --job-name=photobg
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1         # one launcher per node: it starts the GPU processes itself
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32          # photos are read and PNGs written in threads of each process
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out

set -euo pipefail

export GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-8}
export MAIN_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MAIN_PORT=${MAIN_PORT:-29500}
export PHOTOBG_TIMEOUT=${PHOTOBG_TIMEOUT:-1800}  # seconds a collective call waits for a silent node

# SLURM_NODEID (this node's rank) is set by srun for each task, so it is expanded in the task, not here.
srun --kill-on-bad-exit=1 bash -c '
    accelerate launch --multi_gpu \
        --num_machines "$SLURM_NNODES" --machine_rank "$SLURM_NODEID" \
        --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \
        --main_process_ip "$MAIN_NODE" --main_process_port "$MAIN_PORT" \
        --mixed_precision no --dynamo_backend no \
        -m photobg "$@"
' photobg "$@"
