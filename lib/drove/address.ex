defmodule Drove.Address do
  @moduledoc false
  # Resolves what OTP accepts for a server (a pid, a local name, {name, node},
  # {:global, term}, {:via, module, term}) to the {name, node} of a Drove instance, which is
  # always registered under its name on its node. The pid of an instance's top supervisor
  # (what start_link returns, registered as :"#{name}.Supervisor") resolves to the instance.

  @call_timeout 5_000

  @type server :: pid() | atom() | {atom(), node()} | {:global, term()} | {:via, module(), term()}

  @doc false
  @spec resolve(server()) :: {:ok, {atom(), node()}} | {:error, :noproc | :badarg}
  def resolve(name) when is_atom(name) and name not in [nil, true, false],
    do: {:ok, {name, node()}}

  def resolve({:global, term}), do: term |> :global.whereis_name() |> from_pid()
  def resolve({name, node}) when is_atom(name) and is_atom(node), do: {:ok, {name, node}}

  def resolve({:via, mod, term}) when is_atom(mod) do
    mod.whereis_name(term) |> from_pid()
  rescue
    _ in [UndefinedFunctionError, FunctionClauseError] -> {:error, :badarg}
  end

  def resolve(pid) when is_pid(pid), do: from_pid(pid)
  def resolve(_other), do: {:error, :badarg}

  @doc false
  # Like resolve/1, but raises ArgumentError (bad reference) or exits like GenServer.call/3
  # ({:noproc, ...}) when nothing runs under it.
  @spec resolve!(server(), {module(), atom(), list()}) :: {atom(), node()}
  def resolve!(server, mfa) do
    case resolve(server) do
      {:ok, member} ->
        member

      {:error, :noproc} ->
        exit({:noproc, mfa})

      {:error, :badarg} ->
        raise ArgumentError,
              "a Drove instance is addressed by a pid, a local name, {name, node}, " <>
                "{:global, term} or {:via, module, term}, got: #{inspect(server)}"
    end
  end

  defp from_pid(pid) when is_pid(pid) do
    case registered_name(pid) do
      name when is_atom(name) and name != nil ->
        {:ok, {instance_name(name, node(pid)), node(pid)}}

      _ ->
        {:error, :noproc}
    end
  end

  defp from_pid(_undefined), do: {:error, :noproc}

  defp registered_name(pid) when node(pid) == node(),
    do: name_of(Process.info(pid, :registered_name))

  defp registered_name(pid) do
    name_of(:erpc.call(node(pid), Process, :info, [pid, :registered_name], @call_timeout))
  catch
    _, _ -> nil
  end

  defp name_of({:registered_name, name}) when is_atom(name), do: name
  defp name_of(_), do: nil

  # :"X.Supervisor" is the tree of instance X when X runs there too.
  defp instance_name(name, node) do
    case Atom.to_string(name) do
      "Elixir." <> _ = text -> strip(text, name, node)
      text -> strip(text, name, node)
    end
  end

  defp strip(text, name, node) do
    if String.ends_with?(text, ".Supervisor") do
      base = String.to_atom(String.replace_suffix(text, ".Supervisor", ""))
      if registered?(base, node), do: base, else: name
    else
      name
    end
  end

  defp registered?(name, node) when node == node(), do: Process.whereis(name) != nil

  defp registered?(name, node) do
    is_pid(:erpc.call(node, Process, :whereis, [name], @call_timeout))
  catch
    _, _ -> false
  end
end
