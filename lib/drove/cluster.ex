defmodule Drove.Cluster do
  @moduledoc """
  Sets and reads the members of a Drove instance (a `Drove.Registry` or a
  `Drove.DynamicSupervisor`), like `Horde.Cluster`.

  A member is `{name, node}`: the instance registered as `name` on `node`.
  Every Drove instance implements the same two calls, so this module works for
  any of them:

    * `GenServer.call(instance, {:set_members, [{name, node}]}, timeout)`
      replies `:ok`. The list it receives is already normalized by
      `set_members/3`: only `{atom, atom}` tuples, no duplicates, in the
      caller's order.
    * `GenServer.call(instance, :members)` replies the current members as a
      list of `{name, node}`.

  As in Horde, `set_members/3` returns `:ok` even for members that do not
  exist (a node that never runs the instance, or is down): listing them costs
  nothing, since an instance only syncs with members that answer. Unlike
  Horde's `:auto` listener, `Drove.Membership` never crashes on a slow or
  restarting instance; it retries.
  """

  @typedoc "A member: the name of an instance and the node it runs on."
  @type member :: {name :: atom(), node()}

  @typedoc "What `set_members/3` accepts for one member: a bare name means `{name, node()}`."
  @type member_spec :: atom() | member()

  @doc """
  Sets the members of `instance` to `members` and returns `:ok`.

  Each element of `members` is a name (an atom, meaning `{name, node()}`) or a
  `{name, node}` tuple of two atoms. Duplicates are dropped. Anything else
  raises `ArgumentError` before the instance is called. The call exits like
  `GenServer.call/3` when the instance is not running or does not reply within
  `timeout` milliseconds.

      :ok = Drove.Cluster.set_members(MyApp.Registry, [{MyApp.Registry, :"a@host"}, MyApp.Registry])
  """
  @spec set_members(GenServer.server(), [member_spec()], timeout()) :: :ok
  def set_members(instance, members, timeout \\ 5000) do
    # a bare name means that name on the instance's node, as in Horde
    node =
      case Drove.Address.resolve(instance) do
        {:ok, {_name, node}} -> node
        {:error, _} -> node()
      end

    GenServer.call(instance, {:set_members, normalize_members!(members, node)}, timeout)
  end

  @doc """
  Returns the current members of `instance` as a list of `{name, node}`.
  """
  @spec members(GenServer.server()) :: [member()]
  def members(instance) do
    GenServer.call(instance, :members)
  end

  @doc """
  Diagnostics of one instance (a `Drove.Registry`, a `Drove.DynamicSupervisor`, or a
  `Drove.CRDT`): a map with at least `:size` (replica entries), `:memory` (replica bytes),
  `:neighbours` and `:neighbours_up` (sync neighbours, and those that answer),
  `:rounds_in_flight`, `:deltas_in`, `:deltas_out` and `:bad_messages`; registries and
  supervisors add `:members` (a supervisor: `{member, status}` pairs), a supervisor also
  `:children` (replicated entries) and `:local_children`.
  """
  @spec info(GenServer.server()) :: map()
  def info(instance), do: GenServer.call(instance, :info)

  @doc """
  Normalizes a member list as `set_members/3` does: bare names become
  `{name, node}` (`node` defaults to this node; `set_members/3` passes the instance's), duplicates are dropped (the first one stays) and anything
  that is not a name or a `{name, node}` tuple of atoms raises `ArgumentError`.

      iex> Drove.Cluster.normalize_members!([{:reg, :"a@host"}, {:reg, :"a@host"}])
      [{:reg, :"a@host"}]
  """
  @spec normalize_members!([member_spec()], node()) :: [member()]
  def normalize_members!(members, node \\ node())

  def normalize_members!(members, node) when is_list(members) do
    members |> Enum.map(&normalize_member!(&1, node)) |> Enum.uniq()
  end

  def normalize_members!(other, _node) do
    raise ArgumentError,
          "members must be a list of names (atoms) or {name, node} tuples of atoms, " <>
            "got: #{inspect(other)}"
  end

  defp normalize_member!(name, node) when is_atom(name), do: {name, node}

  defp normalize_member!({name, node} = member, _) when is_atom(name) and is_atom(node),
    do: member

  defp normalize_member!(other, _) do
    raise ArgumentError,
          "a member must be a name (an atom, meaning {name, node()}) or a {name, node} tuple " <>
            "of two atoms, got: #{inspect(other)}"
  end

  @doc false
  # Writes an instance's member list into its replica as `{:member, m} => 1` keys (add-wins,
  # any node may write them): puts the members of `wanted` not in `current`, deletes those
  # of `current` not in `wanted`. Returns `{added, removed}`.
  @spec write_members(reference(), Enumerable.t(), Enumerable.t()) :: {[member()], [member()]}
  def write_members(handle, current, wanted) do
    current = MapSet.new(current)
    wanted = MapSet.new(wanted)
    added = MapSet.difference(wanted, current) |> MapSet.to_list()
    removed = MapSet.difference(current, wanted) |> MapSet.to_list()

    Enum.each(
      added,
      &(:ok = Drove.Native.put(handle, Drove.Native.key({:member, &1}), Drove.Native.value(1)))
    )

    Enum.each(removed, &(:ok = Drove.Native.delete(handle, Drove.Native.key({:member, &1}))))
    {added, removed}
  end
end
