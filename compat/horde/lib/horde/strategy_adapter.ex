defmodule Horde.StrategyAdapter do
  @moduledoc false
  # Runs a Drove strategy on members that are any struct or map with :name and :status (a
  # Horde.DynamicSupervisor.Member given by a user or by the supervisor, a
  # Drove.DynamicSupervisor.Member, ...) and returns the member it was given, not a copy.
  #
  # `use Horde.StrategyAdapter, strategy: drove_module` defines a Horde strategy serving it:
  # choose_node/2 and has_quorum?/1, plus choose_nodes/2 with `batch: true` and
  # deterministic?/0 (true) with `deterministic: true`.

  defmacro __using__(opts) do
    strategy = Keyword.fetch!(opts, :strategy)
    batch = Keyword.get(opts, :batch, false)
    deterministic = Keyword.get(opts, :deterministic, false)

    quote location: :keep do
      @behaviour Horde.DistributionStrategy

      @doc "Chooses the member to start `child_spec` on: `{:ok, member}` or `{:error, reason}`."
      @impl true
      @spec choose_node(Supervisor.child_spec() | map(), [Horde.DynamicSupervisor.Member.t()]) ::
              {:ok, Horde.DynamicSupervisor.Member.t()} | {:error, term()}
      def choose_node(child_spec, members),
        do: Horde.StrategyAdapter.choose_node(unquote(strategy), child_spec, members)

      if unquote(batch) do
        @doc """
        `choose_node/2` for many specs at once, in spec order (the optional batch callback of
        `Drove.DistributionStrategy`, which `Drove.DynamicSupervisor` uses on failover).
        """
        @spec choose_nodes([Supervisor.child_spec() | map()], [
                Horde.DynamicSupervisor.Member.t()
              ]) :: {:ok, [Horde.DynamicSupervisor.Member.t()]} | {:error, term()}
        def choose_nodes(child_specs, members),
          do: Horde.StrategyAdapter.choose_nodes(unquote(strategy), child_specs, members)
      end

      if unquote(deterministic) do
        @doc "The same members and child spec always give the same member (no randomness)."
        @spec deterministic?() :: true
        def deterministic?, do: true
      end

      @doc "Whether `members` have quorum for this strategy."
      @impl true
      @spec has_quorum?([Horde.DynamicSupervisor.Member.t()]) :: boolean()
      def has_quorum?(members),
        do: Horde.StrategyAdapter.has_quorum?(unquote(strategy), members)
    end
  end

  @spec choose_node(module(), term(), [map()]) :: {:ok, map()} | {:error, term()}
  def choose_node(drove_strategy, child_spec, members) when is_list(members) do
    case drove_strategy.choose_node(child_spec, to_drove(members)) do
      {:ok, %{name: name, status: status}} -> {:ok, original(members, name, status)}
      {:error, _reason} = error -> error
    end
  end

  @spec choose_nodes(module(), [term()], [map()]) :: {:ok, [map()]} | {:error, term()}
  def choose_nodes(drove_strategy, child_specs, members) when is_list(members) do
    case drove_strategy.choose_nodes(child_specs, to_drove(members)) do
      {:ok, chosen} -> {:ok, Enum.map(chosen, &original(members, &1.name, &1.status))}
      {:error, _reason} = error -> error
    end
  end

  @spec has_quorum?(module(), [map()]) :: boolean()
  def has_quorum?(drove_strategy, members) when is_list(members),
    do: drove_strategy.has_quorum?(to_drove(members))

  defp to_drove(members) do
    for %{name: name, status: status} <- members,
        do: struct!(Drove.DynamicSupervisor.Member, name: name, status: status)
  end

  # Horde keys members by name, the last one given winning; the same here.
  defp original(members, name, status) do
    members
    |> Enum.reverse()
    |> Enum.find(&match?(%{name: ^name, status: ^status}, &1))
    |> Kernel.||(Enum.find(Enum.reverse(members), &match?(%{name: ^name}, &1)))
  end
end
