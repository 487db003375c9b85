defmodule Drove do
  @moduledoc """
  Drove: a distribution layer for the BEAM whose core is written in C.

  State is replicated between nodes by a delta-CRDT kept in C and run as NIFs; nodes talk
  over ordinary Erlang distribution. On top of it:

    * `Drove.CRDT` - a replicated map (add-wins, last-writer-wins) with a DeltaCrdt-like
      API, eager delta push and digest anti-entropy between nodes.
    * `Drove.Registry` - a distributed process registry with `Horde.Registry`'s API.
    * `Drove.DynamicSupervisor` - a distributed dynamic supervisor with
      `Horde.DynamicSupervisor`'s API: placement, failover and handoff.
    * `Drove.Cluster` and `Drove.Membership` - the members of those instances, set by hand
      or kept current (`:auto`, `:participation`, partitions).
    * `Drove.Distribution.Uniform`, `UniformQuorum`, `UniformRandom`, `Rendezvous` -
      placement strategies (`Drove.DistributionStrategy`).
    * `Drove.Telemetry` - `:telemetry` events, when `:telemetry` is loaded.

  `compat/horde` in the repository is a drop-in `Horde` package backed by Drove. How the
  pieces fit is described in `docs/architecture.md`.
  """
end
