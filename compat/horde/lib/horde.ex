defmodule Horde do
  @moduledoc """
  Horde 0.10's public modules, served by Drove (`compat/horde` in Drove's repository).

  An application or library written for Horde gets Drove with one dependency line instead
  of `{:horde, "~> 0.10"}`:

      {:horde, path: "path/to/drove/compat/horde", override: true}

  `Horde.Registry`, `Horde.DynamicSupervisor`, `Horde.Cluster`, the distribution strategies
  (`Horde.UniformDistribution`, `Horde.UniformQuorumDistribution`,
  `Horde.UniformRandomDistribution`, the `Horde.DistributionStrategy` behaviour and
  `Horde.DynamicSupervisor.Member`) and `Horde.NodeListener` keep Horde's names, arities and
  return shapes and delegate to `Drove.Registry`, `Drove.DynamicSupervisor`,
  `Drove.Cluster`, Drove's strategies and `Drove.Membership`. What deliberately differs is
  listed in `docs/migrating-from-horde.md`.
  """
end
